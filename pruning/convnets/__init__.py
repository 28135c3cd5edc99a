"""Early-bird channel pruning of convolutional networks (ResNet-18/50, MobileNetV2) and tabular MLPs: what
resnet.py and mlp.py share.

- units:    channel groups traced by Torch-Pruning's dependency graph; masking by zeros; physical removal
- criteria: slimming, filter L1 magnitude, Taylor (gradient), undecayed, activation, on channels
- models:   HF ResNet / MobileNetV2 from configs or a local folder (CIFAR stem), the MLP; save and load
- data:     digits, CIFAR-10 (python batches, Hub), ImageFolder; bundled tabular sets, Titanic, any CSV
- trainer:  the search trainer (HF Trainer + the Early-Bird callback), its checkpointed state
- experiment: a run of resnet.py / mlp.py: search, prune, retrain, results.json
"""
