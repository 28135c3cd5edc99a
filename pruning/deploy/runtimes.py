"""Deployment formats of a trained classifier, run by ONNX Runtime or OpenVINO on the CPU.

- `export_onnx`: the PyTorch model -> fp32 ONNX (torch.onnx's dynamo exporter; optimum does not support
  transformers 5), checked against PyTorch's logits, then ONNX Runtime's BERT fusions (SkipLayerNorm, BiasGelu;
  not EmbedLayerNormalization, which would hide the word table from both quantizers).
- `quantize_int8`: ONNX Runtime's dynamic quantization (int8 weights, activations quantized on the fly).
- `quantize_mixed`: per matrix 8 or 4 bits: 4-bit block-quantized weights (MatMulNBits, and
  GatherBlockQuantized for embeddings), int8 dynamic quantization for the rest; `four_bit_block_size_taken`:
  whether ONNX Runtime's 4-bit path takes a block size, asked of the runtime itself; `gemm_as_matmul`: Gemm nodes
  (an MLP's Linears) rewritten as MatMul + Add, the form the 4-bit quantizer takes.
- `pack_sparse` / `load_model`: a bitmap container for weight tensors that are mostly exact zeros, so the bytes
  unstructured pruning saves are counted with their index cost. ONNX Runtime has no sparse CPU kernels for these
  layers: the tensors are unpacked to dense at load, and speed is that of the dense model.
- `convert_openvino`: the fp32 ONNX variant -> OpenVINO IR (`model.xml` + `model.bin`, fp32 weights),
  checked against ONNX Runtime's logits on the same file; `quantize_openvino_int8`: NNCF post-training
  quantization (int8 weights and activations, calibrated on training sentences); `compress_openvino_weights`:
  NNCF weight compression, INT4 (asymmetric, groups) for a ratio of the matrices and INT8 for the rest.
- `word_embedding_bytes`: the bytes of a variant's files that hold the word-embedding lookup (any lookup form,
  each tensor at its stored data type); `float_word_tables`: word tables a quantized variant left in float.
- `evaluate` (also `python pruning/deploy/runtimes.py VARIANT DEV.npz THREADS BATCH`): the task's metrics (those
  `write_dev` recorded: `pruning.data.tasks.compute_metrics`) and peak memory of one variant in a fresh process.

The exported graph takes `input_ids` and `attention_mask`, and `token_type_ids` when the model reads them
(`model_inputs`: a BERT-like model whose tokenizer writes segment ids, or whose type_vocab_size > 1), so a
sentence-pair task deploys with its segment ids.

Every variant is a directory (`model.onnx`, plus `sparse.safetensors` when packed; `model.xml` + `model.bin`
for OpenVINO; or a PyTorch checkpoint); its model bytes are the sum of its MODEL_FILES (the tokenizer, label
names and model card that `pruning.deploy.artifact` adds beside them are counted apart).
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a bare script: `pruning` imports nothing heavy, so the package is used as it is
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pruning.host import peak_rss_mb  # noqa: E402

ONNX_FILE = "model.onnx"
SPARSE_FILE = "sparse.safetensors"
OPENVINO_FILE = "model.xml"  # its weights in model.bin beside it
MODEL_FILES = (ONNX_FILE, SPARSE_FILE, OPENVINO_FILE, "model.bin")
# pruning.data.loading.MODEL_INPUTS, not imported: this file also runs alone in a fresh process, without torch.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class DeployError(ValueError):
    """A model or file that cannot be exported, quantized or loaded; the message says what and how to fix it."""


def _quiet():
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "onnxruntime", "onnxscript", "root", "nncf"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- directories written whole or not at all --------------------------------------------------------
def replace_directory(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place; an older one is removed only after the move."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def fresh_tmp(final: Path) -> Path:
    """An empty hidden directory `.NAME.tmp` beside `final` (any earlier one removed), to write a variant
    into before it is renamed into place."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def directory_bytes(path: Path) -> int:
    """Size on disk of a directory: the sum of its files' sizes in bytes, subdirectories included."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def disk_bytes(path: Path) -> int:
    """Size on disk of a variant's model: the sum of its MODEL_FILES that exist, in bytes (not the
    tokenizer, label names or model card beside them)."""
    return sum((Path(path) / name).stat().st_size for name in MODEL_FILES if (Path(path) / name).is_file())


# --- export -----------------------------------------------------------------------------------------
def model_inputs(model, columns) -> tuple[str, ...]:
    """The inputs the exported graph takes, in INPUTS order: input_ids and attention_mask, and token_type_ids
    when the model's forward accepts them and either the tokenizer wrote them (`columns`, the tokenized
    dev set's column names) or the model has more than one segment type (config.type_vocab_size > 1)."""
    accepts = "token_type_ids" in inspect.signature(model.forward).parameters
    types = getattr(model.config, "type_vocab_size", 1) or 1
    if accepts and ("token_type_ids" in columns or types > 1):
        return INPUTS
    return INPUTS[:2]


def export_onnx(model, directory: Path, probe: dict[str, np.ndarray], tolerance: float = 1e-3) -> None:
    """Write `directory/model.onnx`: fp32, dynamic batch and sequence length, its inputs the INPUTS that
    `probe` holds (int64 arrays (batch, tokens): input_ids, attention_mask, and token_type_ids for a
    model that reads segment ids), checked on `probe`. Raises DeployError when torch.onnx.export fails
    or the logits differ from PyTorch's by more than `tolerance` (absolute)."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    _quiet()
    names = [k for k in INPUTS if k in probe]

    class Logits(torch.nn.Module):  # one tensor out, named inputs in: what a deployed classifier takes
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **segments).logits

    model = model.eval()
    example = tuple(torch.from_numpy(probe[k][:2]) for k in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    raw = directory / "raw.onnx"
    try:
        torch.onnx.export(Logits(model), example, str(raw), input_names=names, output_names=["logits"],
                          dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), dynamo=True,
                          external_data=False, verbose=False)
    except Exception as e:  # the exporter's own errors are long; the first line names the operator
        raise DeployError(f"torch.onnx.export cannot export {type(model).__name__}: "
                          f"{str(e).strip().splitlines()[0]}") from None
    from onnxruntime.transformers.fusion_options import FusionOptions
    options = FusionOptions("bert")
    # ORT's SkipLayerNormalization fusion indexes a LayerNorm's bias input; ModernBERT's LayerNorms have none.
    options.enable_skip_layer_norm = not any(isinstance(m, torch.nn.LayerNorm) and m.bias is None
                                             for m in model.modules())
    # ORT's EmbedLayerNormalization fusion (it matches DistilBERT's embeddings) puts the word table inside one
    # node that neither quantizer touches (both quantize Gather lookups only): the int8 and 8/4-bit variants
    # would keep it fp32. Unfused, every family's lookups are Gathers (optimum#290).
    options.enable_embed_layer_norm = False
    fused = optimize_model(str(raw), model_type="bert", num_heads=0, hidden_size=0, optimization_options=options)
    fused.save_model_to_file(str(directory / ONNX_FILE))
    raw.unlink()
    with torch.inference_mode():
        expected = model(**{k: torch.from_numpy(probe[k]) for k in names}).logits.numpy()
    got = session(directory, threads=1).run(["logits"], {k: probe[k] for k in names})[0]
    error = float(np.abs(got - expected).max())
    if not error <= tolerance:
        raise DeployError(f"the exported ONNX model's logits differ from PyTorch's by {error:.2g} "
                          f"(> {tolerance}); the exporter mistranslated an operator of {type(model).__name__}")


def linear_initializers(onnx_model, linears: dict[str, "np.ndarray"]) -> dict[str, tuple[str, str]]:
    """Which MatMul/Gemm node and initializer of the ONNX graph carries each PyTorch Linear weight.

    Matched by value (the initializer is the weight or its transpose), which survives the exporter's and the
    optimizer's renaming. `linears` maps a module name to its weight (out, in) as numpy."""
    from onnx import numpy_helper
    inits = {i.name: i for i in onnx_model.graph.initializer}
    candidates = {}
    for node in onnx_model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            for name in node.input[:2]:
                if name in inits:
                    candidates[name] = node.name
    by_shape: dict[tuple, list[str]] = {}
    for name in candidates:
        by_shape.setdefault(tuple(inits[name].dims), []).append(name)
    found = {}
    for module, weight in linears.items():
        for init_name in by_shape.get(weight.T.shape, []) + by_shape.get(weight.shape, []):
            value = numpy_helper.to_array(inits[init_name])
            if value.shape == weight.T.shape and np.array_equal(value, weight.T) or \
                    value.shape == weight.shape and np.array_equal(value, weight):
                found[module] = (candidates[init_name], init_name)
                break
        else:
            raise DeployError(f"no MatMul/Gemm of the exported graph carries the weight of {module}")
    return found


def embedding_gathers(onnx_model) -> list[str]:
    """Gather nodes that look up a 2-D initializer: the word, position and token-type embeddings, in the form
    ONNX Runtime's quantizers take. Raises DeployError when the word embeddings are looked up by another
    node (ORT's fused EmbedLayerNormalization: `export_onnx` does not fuse it, a graph made elsewhere may),
    which both quantizers would leave in fp32."""
    fused = [n for n, _ in word_lookups(onnx_model.graph) if n.op_type not in ("Gather", "GatherND")]
    if fused:
        raise DeployError(_unquantizable(fused[0]))
    inits = {i.name: i for i in onnx_model.graph.initializer}
    return [n.name for n in onnx_model.graph.node
            if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]


# --- quantization -----------------------------------------------------------------------------------
def quantize_int8(source: Path, directory: Path, nodes: list[str] | None = None) -> None:
    """int8 weights (per output channel) for every MatMul/Gemm and the embeddings, or for `nodes` only.
    Quantizing everything, raises DeployError when the written model still stores a word-embedding table
    in floating point (`float_word_tables`: a lookup form ONNX Runtime's quantizer does not take)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    _quiet()
    quantize_dynamic(Path(source) / ONNX_FILE if Path(source).is_dir() else source, directory / ONNX_FILE,
                     op_types_to_quantize=["MatMul", "Gemm", "Gather"], nodes_to_quantize=nodes,
                     per_channel=True, weight_type=QuantType.QInt8,
                     # types behind a 4-bit (com.microsoft) node are unknown to ONNX's shape inference
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    if nodes is None:
        left = float_word_tables(onnx.load(str(directory / ONNX_FILE)).graph)
        if left:
            raise DeployError(_unquantizable(next(iter(left.values()))))


def quantize_mixed(source: Path, directory: Path, four_bit: list[str], eight_bit: list[str],
                   block_size: int = 32) -> None:
    """`four_bit` nodes (MatMul or embedding Gather) get 4-bit weights in blocks of `block_size` along the
    input dimension (asymmetric, one fp32 scale and a 4-bit zero point per block); `eight_bit` nodes
    (MatMul, Gemm or Gather) int8. Checked on the result: exactly the named nodes changed, at the named
    width (DeployError otherwise, and for a name that is no such node of the graph: a fused embedding
    lookup, which neither quantizer takes, is refused here). ONNX Runtime's MatMulNBitsQuantizer."""
    import onnx
    _quiet()
    model = onnx.load(str(Path(source) / ONNX_FILE))
    for names, ops in ((four_bit, ("MatMul", "Gather")), (eight_bit, ("MatMul", "Gemm", "Gather"))):
        unknown = set(names) - {n.name for n in model.graph.node if n.op_type in ops}
        if unknown:
            raise DeployError(f"no {' or '.join(ops)} node named {sorted(unknown)[:3]} in the graph")
    gemms = [n.name for n in model.graph.node if n.op_type == "Gemm" and n.name in set(eight_bit)]
    if gemms:  # the int8 quantizer rewrites a Gemm as MatMul + Add under new names, then leaves it fp32
        model = gemm_as_matmul(model, gemms)  # (onnxruntime 1.32): hand it MatMuls that keep the names
    if four_bit:
        model = _four_bit(model, four_bit, block_size)
    four_bit_ops = sum(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in model.graph.node)
    if four_bit_ops != len(four_bit) or {n.name for n in model.graph.node} & set(four_bit):
        raise DeployError(f"ONNX Runtime made {four_bit_ops} nodes 4-bit where {len(four_bit)} were asked for")
    staged = directory / "staged.onnx"
    onnx.save(model, str(staged))
    if eight_bit:
        quantize_int8(staged, directory, nodes=list(eight_bit))
        staged.unlink()
        result = onnx.load(str(directory / ONNX_FILE))
        floats = {i.name for i in result.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        # a quantized MatMul/Gemm becomes another operator; a quantized Gather keeps its name and reads int8
        left = {n.name for n in result.graph.node if n.name in eight_bit and (
            n.op_type in ("MatMul", "Gemm") or n.op_type == "Gather" and n.input[0] in floats)}
        if left:
            raise DeployError(f"ONNX Runtime left {len(left)} nodes in fp32 that were to be int8: {sorted(left)[:3]}")
    else:
        os.replace(staged, directory / ONNX_FILE)


def gemm_as_matmul(model, names: list[str]):
    """`model` (an onnx ModelProto, changed in place and returned) with each Gemm node of `names` (alpha = beta = 1,
    transA = 0, a constant weight B) written as a MatMul that keeps the Gemm's name (B transposed when transB = 1,
    stored as a new initializer) followed by an Add of its bias C: ONNX Runtime's 4-bit quantizer (MatMulNBits)
    takes MatMul nodes only, and torch.onnx writes a Linear on 2-D input (an MLP's) as Gemm. Initializers no node
    reads any more are dropped. Raises DeployError for a name that is no such Gemm."""
    from onnx import helper, numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    wanted, nodes = set(names), []
    for node in model.graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        wanted.discard(node.name)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 \
                or attrs.get("transA", 0) or node.input[1] not in inits:
            raise DeployError(f"{node.name} is a {node.op_type}, not a Gemm of a constant weight (alpha = beta = 1, "
                              "transA = 0) that a MatMul can replace")
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed = numpy_helper.from_array(numpy_helper.to_array(inits[weight]).T.copy(), weight + "_transposed")
            model.graph.initializer.append(transposed)
            weight = transposed.name
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = node.output[0] + "_matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=node.name + "_bias"))
    if wanted:
        raise DeployError(f"no node named {sorted(wanted)[:3]} in the graph")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    read = {i for n in model.graph.node for i in n.input} | {i.name for i in model.graph.input}
    kept = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _four_bit(model, four_bit: list[str], block_size: int):
    """`model` (an onnx ModelProto) with its `four_bit` MatMul and Gather nodes made MatMulNBits and
    GatherBlockQuantized by ONNX Runtime's MatMulNBitsQuantizer, blocks of `block_size`; every other
    node of those types is left alone. Raises what the quantizer raises (a block size it cannot take:
    `four_bit_block_size_taken`)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                  MatMulNBitsQuantizer)
    candidates = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather")}
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=4,
                                          op_types_to_quantize=("MatMul", "Gather"),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    # ONNX Runtime quantizes every node of those types unless excluded (nodes_to_include only adds).
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, algo_config=config,
                                     nodes_to_exclude=sorted(candidates - set(four_bit)))
    quantizer.process()
    return quantizer.model.model


# --- what the runtimes take -------------------------------------------------------------------------
def four_bit_block_size_taken(block_size: int) -> bool:
    """Whether ONNX Runtime's 4-bit path takes blocks of `block_size` input columns, asked of the runtime
    itself: a small graph (a MatMul of 64 input columns and a word-embedding Gather of 64 columns) is
    quantized by the quantizer `quantize_mixed` runs (`_four_bit`), loaded and run. The limits live in
    ONNX Runtime's C++ kernels and its Python quantizer, which state them only by refusing (onnxruntime
    1.32: 16, 32, 64, 128, 256)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    _quiet()
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["embedded"], name="lookup"),
         helper.make_node("MatMul", ["embedded", "weight"], ["out"], name="matmul")], "probe",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        quantized = _four_bit(model, ["lookup", "matmul"], block_size)
        if sum(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in quantized.graph.node) != 2:
            return False
        ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input_ids": np.arange(3, dtype=np.int64)})
    except Exception:  # any refusal: a kernel's RuntimeError, the quantizer's assertion, a load that fails
        return False
    return True


def four_bit_block_sizes(largest: int = 4096) -> list[int]:
    """The powers of two up to `largest` that ONNX Runtime's 4-bit path takes (`four_bit_block_size_taken`),
    ascending: what a refusal of BLOCK_SIZE names."""
    return [2 ** k for k in range(largest.bit_length()) if four_bit_block_size_taken(2 ** k)]


# --- sparse storage ---------------------------------------------------------------------------------
def pack_sparse(source: Path, directory: Path, min_elements: int = 4096) -> dict:
    """Copy an ONNX variant, storing each large initializer that is cheaper as a bitmap of its nonzero
    positions (1 bit per entry) plus the nonzero values, in `sparse.safetensors`.

    A bitmap beats index lists (CSR with 16-bit column indices costs 2 bytes per nonzero) at any density above
    1/16, which covers every rate this toolkit prunes at; a tensor is packed only when that is smaller."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import save_file
    model = onnx.load(str(Path(source) / ONNX_FILE))
    packed, kept, stats = {}, [], {"tensors": 0, "dense_bytes": 0, "packed_bytes": 0}
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        nonzero = value != 0
        cost = (value.size + 7) // 8 + int(nonzero.sum()) * value.itemsize
        if value.size >= min_elements and cost < value.nbytes:
            packed[f"{init.name}/bitmap"] = np.packbits(nonzero.reshape(-1))
            packed[f"{init.name}/values"] = np.ascontiguousarray(value[nonzero])
            packed[f"{init.name}/shape"] = np.asarray(value.shape, dtype=np.int64)
            stats["tensors"] += 1
            stats["dense_bytes"] += value.nbytes
            stats["packed_bytes"] += cost
        else:
            kept.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(directory / ONNX_FILE))
    if packed:
        save_file(packed, str(directory / SPARSE_FILE))
    return stats


def load_model(directory: Path) -> bytes:
    """The serialized ONNX model of a variant, with packed tensors unpacked to dense."""
    path = Path(directory) / ONNX_FILE
    if not path.exists():
        raise DeployError(f"{directory} holds no {ONNX_FILE}: not a variant written by compress.py")
    if not (Path(directory) / SPARSE_FILE).exists():
        return path.read_bytes()
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file
    model = onnx.load(str(path))
    tensors = load_file(str(Path(directory) / SPARSE_FILE))
    for name in sorted({k.rsplit("/", 1)[0] for k in tensors}):
        shape = tuple(int(s) for s in tensors[f"{name}/shape"])
        values = tensors[f"{name}/values"]
        mask = np.unpackbits(tensors[f"{name}/bitmap"], count=int(np.prod(shape))).astype(bool)
        dense = np.zeros(mask.size, dtype=values.dtype)
        dense[mask] = values
        model.graph.initializer.append(numpy_helper.from_array(dense.reshape(shape), name))
    return model.SerializeToString()


def session(directory: Path, threads: int):
    """An ONNX Runtime CPU InferenceSession of a variant (`load_model`: packed tensors unpacked) with
    `threads` intra-op threads, one inter-op thread and no spinning. Raises DeployError as `load_model` does."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ONNX Runtime's idle threads spin for a while after each run, which would slow whatever is timed next
    # in this process (seen here: a PyTorch model timed after them ran several times slower); deployments
    # that run nothing else may turn spinning back on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(load_model(directory), options, providers=["CPUExecutionProvider"])


# --- OpenVINO ---------------------------------------------------------------------------------------
# Compiled on the CPU with a fixed thread count, one stream, fp32 arithmetic wherever a layer is not quantized
# (a CPU with bf16 units would otherwise run the "fp32" model in bf16), and no thread pinning: the variants
# are timed in one process taking turns, and pinned threads would change what runs after them.
def openvino_config(threads: int) -> dict:
    """The OpenVINO CPU plugin's settings for `threads` intra-op threads (see the comment above)."""
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}


def openvino_compiled(directory: Path, threads: int):
    """The variant's `model.xml` compiled for the CPU (`openvino_config`). Raises DeployError when the
    directory holds no OpenVINO model."""
    import openvino as ov
    path = Path(directory) / OPENVINO_FILE
    if not path.exists():
        raise DeployError(f"{directory} holds no {OPENVINO_FILE}: not an OpenVINO variant written by compress.py")
    return ov.Core().compile_model(str(path), "CPU", openvino_config(threads))


def _read_openvino(directory: Path):
    import openvino as ov
    return ov.Core().read_model(str(Path(directory) / OPENVINO_FILE))


def _save_openvino(model, directory: Path) -> None:
    import openvino as ov
    ov.save_model(model, str(Path(directory) / OPENVINO_FILE), compress_to_fp16=False)


def convert_openvino(source: Path, directory: Path, probe: dict[str, np.ndarray], tolerance: float = 1e-3) -> None:
    """Write `directory/model.xml` + `model.bin`: the fp32 ONNX variant in `source` (the very file ONNX
    Runtime runs, its BERT fusions included) converted by `openvino.convert_model`, weights kept in fp32.
    Checked on `probe` (int64 arrays (batch, tokens) by input name) against ONNX Runtime on that file;
    raises DeployError when OpenVINO cannot convert it or the logits differ by more than `tolerance`."""
    import openvino as ov
    _quiet()
    path = Path(source) / ONNX_FILE
    if (Path(source) / SPARSE_FILE).exists():
        raise DeployError(f"{source} is bitmap-packed; convert its unpacked fp32 variant instead")
    try:
        model = ov.convert_model(str(path))
    except Exception as e:
        raise DeployError(f"OpenVINO cannot convert {path}: {str(e).strip().splitlines()[0]}") from None
    _save_openvino(model, directory)
    names = [i.name for i in session(source, 1).get_inputs()]
    expected = session(source, threads=1).run(["logits"], {k: probe[k] for k in names})[0]
    got = runner(directory, threads=1)(probe)
    error = float(np.abs(got - expected).max())
    if not error <= tolerance:
        raise DeployError(f"the OpenVINO model's logits differ from ONNX Runtime's on the same file by {error:.2g} "
                          f"(> {tolerance})")


def quantize_openvino_int8(source: Path, directory: Path, calibration: list[dict[str, np.ndarray]]) -> dict:
    """NNCF post-training quantization of the OpenVINO variant in `source` into `directory`: int8 weights
    and activations, preset MIXED (symmetric weights, asymmetric activations), model type TRANSFORMER
    (SmoothQuant, and the ops NNCF keeps in float for transformers), statistics from `calibration` (each
    item one tokenized sentence: int64 arrays (1, tokens) by input name; training data, never dev).
    Returns {"calibration_sentences", "preset", "fake_quantize_ops"}; raises DeployError when nothing
    was quantized or `calibration` is empty."""
    import nncf
    _quiet()
    nncf.set_log_level(40)  # logging.ERROR: no progress bars
    if not calibration:
        raise DeployError("post-training quantization needs calibration sentences; got none")
    model = _read_openvino(source)
    names = [i.get_any_name() for i in model.inputs]
    dataset = nncf.Dataset(calibration, lambda item: {k: item[k] for k in names})
    quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED,
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    ops = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    if not ops:
        raise DeployError(f"NNCF quantized nothing in {source}")
    _save_openvino(quantized, directory)
    return {"calibration_sentences": len(calibration), "preset": "mixed", "model_type": "transformer",
            "fake_quantize_ops": ops}


def compress_openvino_weights(source: Path, directory: Path, four_bit_ratio: float, group_size: int) -> dict:
    """NNCF weight compression of the OpenVINO variant in `source` into `directory`: INT4 asymmetric weights in
    groups of `group_size` input channels for `four_bit_ratio` of the matrices' weights (NNCF's data-free
    sensitivity picks which), INT8 asymmetric per channel for the rest; NNCF keeps the embeddings and the
    last layer at INT8. A matrix whose input size `group_size` does not divide gets a smaller power-of-two
    group (NNCF's ADJUST fallback, groups of at least 16) or, failing that, INT8. Activations stay fp32.
    Returns {"four_bit_ratio", "group_size", "int4_tensors", "int8_tensors"}: the weight-side tensors (codes
    and zero points, 2-D and up) stored at each width."""
    import nncf
    _quiet()
    nncf.set_log_level(40)
    model = _read_openvino(source)
    if four_bit_ratio > 0:
        # A matrix whose input size the group does not divide (pruned FFNs keep any number of neurons) gets
        # the largest power-of-two group below `group_size` that does (at least 16), else INT8.
        from nncf.quantization.advanced_parameters import GroupSizeFallbackMode
        advanced = nncf.AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                                      min_adjusted_group_size=16)
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, ratio=four_bit_ratio,
                                           group_size=group_size, advanced_parameters=advanced)
    else:
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    widths = [op.get_output_element_type(0).bitwidth for op in compressed.get_ops()
              if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_integral()
              and op.get_output_element_type(0).bitwidth in (4, 8) and len(op.get_output_shape(0)) >= 2]
    _save_openvino(compressed, directory)
    return {"four_bit_ratio": four_bit_ratio, "group_size": group_size, "int4_tensors": widths.count(4),
            "int8_tensors": widths.count(8)}


# --- what the embeddings cost ------------------------------------------------------------------------
_PASS_THROUGH = ("Cast", "Convert", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten")
_LOOKUPS = ("Gather", "GatherND", "GatherBlockQuantized")  # a remap table indexed by ids exports as GatherND
# Every ONNX node that looks rows up by token id: (the input that takes the ids, the inputs that hold the table
# and what dequantizes it inside the node; the table itself first). ORT's EmbedLayerNormalization fusion puts
# the word table in input 2 (its quantizer's QEmbedLayerNormalization: codes 2, scale 8, zero point 13);
# `export_onnx` does not fuse it, but a graph made elsewhere may.
_ONNX_LOOKUPS = {"Gather": (1, (0,)), "GatherND": (1, (0,)), "GatherBlockQuantized": (1, (0, 2, 3)),
                 "EmbedLayerNormalization": (0, (2,)), "QEmbedLayerNormalization": (0, (2, 8, 13))}


def word_embedding_bytes(directory: Path) -> int:
    """Bytes of a variant's stored tensors that serve the word-embedding lookup: every lookup whose indices
    come from `input_ids` (through casts and reshapes, and through an id remap table of a trimmed vocabulary,
    which is itself such a Gather; in any form `word_lookups` knows), every constant its table is computed
    from (quantized codes, scales, zero points) and the scale and zero point of a dequantization right after
    it. Each tensor counts what its stored data type takes (`tensor_bytes`; a packed one, its packed
    bytes), as written, never as intended. ONNX (packed tensors included) and OpenVINO variants; found from
    the graph, not from names."""
    directory = Path(directory)
    if (directory / OPENVINO_FILE).exists():
        return _openvino_lookup_bytes(_read_openvino(directory))
    if (directory / ONNX_FILE).exists():
        return _onnx_lookup_bytes(directory)
    raise DeployError(f"{directory} is neither an ONNX nor an OpenVINO variant")


def tensor_bytes(initializer) -> int:
    """Bytes an ONNX initializer's values take in its stored data type: elements x bits per element
    (4 for int4/uint4, 2 for int2/uint2), rounded up to whole bytes; what `raw_data` holds."""
    from onnx import helper
    count = int(np.prod(initializer.dims)) if len(initializer.dims) else 1
    bits = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}.get(
        helper.tensor_dtype_to_string(initializer.data_type).removeprefix("TensorProto."))
    if bits is None:
        bits = 8 * np.dtype(helper.tensor_dtype_to_np_dtype(initializer.data_type)).itemsize
    return (count * bits + 7) // 8


def word_lookups(graph) -> list[tuple[object, tuple[int, ...]]]:
    """The nodes of an ONNX graph that look up rows by the ids of `input_ids` (through casts and reshapes, and
    through an id remap table), each with the positions of its inputs that hold the table (`_ONNX_LOOKUPS`:
    the table first): the word-embedding lookups, in whichever form they were exported or fused."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier, found = ["input_ids"], []
    while frontier:
        tensor = frontier.pop()
        for n in consumers.get(tensor, []):
            if n.op_type in _PASS_THROUGH and n.input[0] == tensor:
                frontier.extend(n.output)
            elif n.op_type in _ONNX_LOOKUPS and len(n.input) > _ONNX_LOOKUPS[n.op_type][0] \
                    and n.input[_ONNX_LOOKUPS[n.op_type][0]] == tensor:
                found.append((n, _ONNX_LOOKUPS[n.op_type][1]))
                frontier.extend(n.output[:1])  # a remap's output indexes the embedding table
    return found


def _sources(graph, tensors: list[str]) -> set[str]:
    """The graph's initializers (and other graph-level names with no producer) that `tensors` are
    computed from, `tensors` included."""
    producer = {o: n for n in graph.node for o in n.output}
    found, stack = set(), [t for t in tensors if t]
    while stack:
        tensor = stack.pop()
        if tensor in found:
            continue
        found.add(tensor)
        if tensor in producer:
            stack.extend(i for i in producer[tensor].input if i)
    return {t for t in found if t not in producer}


def word_table_tensors(graph) -> set[str]:
    """Names of the stored tensors that serve the word lookups of an ONNX graph (`word_lookups`): those
    their table inputs are computed from, and the scale and zero point of a DequantizeLinear applied to a
    lookup's output (ONNX Runtime's int8 Gather). Unpacked initializers or names packed beside them."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    tensors = []
    for node, tables in word_lookups(graph):
        tensors += [node.input[k] for k in tables if k < len(node.input)]
        tensors += [i for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"
                    and c.input[0] == node.output[0] for i in c.input[1:]]
    return _sources(graph, tensors) - {i.name for i in graph.input}


def float_word_tables(graph) -> dict[str, object]:
    """The word-embedding tables of an ONNX graph still stored in floating point: initializer name -> the
    lookup node it serves, for every table (2-D or more) that a lookup's table input is computed from
    (not the per-block scales beside quantized codes). Empty for a variant whose word embeddings are
    quantized; an fp32 variant lists its table."""
    from onnx import TensorProto
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
    inits = {i.name: i for i in graph.initializer}
    left = {}
    for node, tables in word_lookups(graph):
        for name in _sources(graph, [node.input[tables[0]]]):
            if name in inits and inits[name].data_type in floats and len(inits[name].dims) >= 2:
                left[name] = node
    return left


def _unquantizable(lookup) -> str:
    """What a DeployError says of a word lookup that ONNX Runtime's quantizers leave in floating point."""
    return (f"the word embeddings are looked up by {lookup.op_type} node {lookup.name!r}, which ONNX Runtime's "
            "quantizers leave in floating point (they quantize Gather lookups); export the model with "
            "pruning.deploy.runtimes.export_onnx, which keeps every family's lookups as Gather nodes")


def _onnx_lookup_bytes(directory: Path) -> int:
    import onnx
    graph = onnx.load(str(directory / ONNX_FILE)).graph
    inits = {i.name: i for i in graph.initializer}
    packed = {}
    if (directory / SPARSE_FILE).exists():
        from safetensors.numpy import load_file
        for key, value in load_file(str(directory / SPARSE_FILE)).items():
            packed[key.rsplit("/", 1)[0]] = packed.get(key.rsplit("/", 1)[0], 0) + value.nbytes
    return sum(tensor_bytes(inits[name]) if name in inits else packed.get(name, 0)
               for name in word_table_tensors(graph))


def _openvino_lookup_bytes(model) -> int:
    starts = [p for p in model.get_parameters() if "input_ids" in p.output(0).get_names()]
    frontier, lookups = list(starts), []
    while frontier:
        node = frontier.pop()
        for target in node.output(0).get_target_inputs():
            consumer, index = target.get_node(), target.get_index()
            if consumer.get_type_name() in _PASS_THROUGH and index == 0:
                frontier.append(consumer)
            elif consumer.get_type_name() in _LOOKUPS and index == 1:
                lookups.append(consumer)
                frontier.append(consumer)
    total, seen = 0, set()
    stack = [n.input_value(0).get_node() for n in lookups]
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        if node.get_type_name() == "Constant":
            count = int(np.prod(list(node.get_output_shape(0)))) if len(node.get_output_shape(0)) else 1
            total += (count * node.get_output_element_type(0).bitwidth + 7) // 8
        elif node.get_type_name() != "Parameter":
            stack.extend(v.get_node() for v in node.input_values())
    return total


# --- evaluation -------------------------------------------------------------------------------------
def write_dev(path: Path, dev, inputs: tuple[str, ...], pad_id: int, metrics: tuple[str, ...]) -> None:
    """The tokenized dev set, for evaluation in another process. `dev`: columns by name (a tokenized
    `datasets.Dataset` or a dict of lists): input_ids (token ids per row), "label" (class ids, or floats
    for a regression), and token_type_ids when the tokenizer wrote them; `inputs` (`model_inputs`) say
    which the model takes (token_type_ids missing from `dev` are written as zeros: one segment).
    `metrics`: the task's metric names (`pruning.data.tasks.METRIC_TITLES`), the headline first."""
    ids = [np.asarray(x, dtype=np.int64) for x in dev["input_ids"]]
    columns = getattr(dev, "column_names", None) or list(dev)
    types = {}
    if "token_type_ids" in inputs:
        types["type_ids"] = (np.concatenate([np.asarray(x, dtype=np.int64) for x in dev["token_type_ids"]])
                             if "token_type_ids" in columns else np.zeros(sum(map(len, ids)), dtype=np.int64))
    labels = np.asarray(dev["label"])
    np.savez(path, ids=np.concatenate(ids), lengths=np.asarray([len(x) for x in ids], dtype=np.int64),
             labels=labels.astype(np.float64 if labels.dtype.kind == "f" else np.int64), pad_id=np.int64(pad_id),
             metrics=np.asarray(metrics, dtype=str), **types)


def dev_batches(path: Path, batch_size: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Batches in dev order, each padded to its own longest row: input_ids, attention_mask (and
    token_type_ids when `write_dev` wrote them, padded with 0) as int64 arrays (batch, longest); and
    the labels, an array (rows,) of class ids (int64) or a regression's targets (float64)."""
    data = np.load(path)
    lengths, pad = data["lengths"], int(data["pad_id"])
    columns = {"input_ids": (data["ids"], pad), "token_type_ids": (data["type_ids"], 0)} if "type_ids" in data \
        else {"input_ids": (data["ids"], pad)}
    starts = np.concatenate([[0], np.cumsum(lengths)])
    batches = []
    for b in range(0, len(lengths), batch_size):
        rows = range(b, min(b + batch_size, len(lengths)))
        width = int(lengths[b:b + batch_size].max())
        batch = {name: np.full((len(rows), width), fill, dtype=np.int64) for name, (_, fill) in columns.items()}
        batch["attention_mask"] = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            for name, (values, _) in columns.items():
                batch[name][i, :lengths[r]] = values[starts[r]:starts[r + 1]]
            batch["attention_mask"][i, :lengths[r]] = 1
        batches.append({k: batch[k] for k in INPUTS if k in batch})
    return batches, data["labels"]


def _tasks():
    """pruning.data.tasks (metrics, predictions). Run as a script, this file loads it alone, by path: the
    package's __init__ would import torch and transformers, whose memory a deployment does not pay."""
    if __package__:
        from pruning.data import tasks
        return tasks
    name = "_deploy_tasks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "data" / "tasks.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def runner(directory: Path, threads: int):
    """A function batch -> logits for a variant directory: OpenVINO (`model.xml`), ONNX Runtime
    (`model.onnx`), or PyTorch for a checkpoint. Logits: float32 array (batch, labels). Raises DeployError
    for a directory that is none of these."""
    directory = Path(directory)
    if (directory / OPENVINO_FILE).exists():
        compiled = openvino_compiled(directory, threads)
        ov_names = [i.get_any_name() for i in compiled.inputs]
        return lambda batch: compiled({k: batch[k] for k in ov_names})[0]
    if (directory / ONNX_FILE).exists():
        ort_session = session(directory, threads)
        names = [i.name for i in ort_session.get_inputs()]  # a graph exported without token_type_ids skips them
        return lambda batch: ort_session.run(["logits"], {k: batch[k] for k in names})[0]
    if not (directory / "config.json").exists():
        raise DeployError(f"{directory} is neither an ONNX or OpenVINO variant nor a saved model directory")
    import torch
    from transformers import AutoModelForSequenceClassification
    torch.set_num_threads(threads)
    return pytorch_runner(AutoModelForSequenceClassification.from_pretrained(str(directory),
                                                                             trust_remote_code=True))


def pytorch_runner(model):
    """batch -> logits for a PyTorch classifier in memory."""
    import torch
    model.eval()

    def run(batch):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return run


def predict(directory: Path, dev: Path, threads: int, batch_size: int = 64) -> dict:
    """Load a variant and predict the dev set `write_dev` wrote: "predictions" (class ids, or a
    regression's values, in dev order), "load_seconds", and this process's memory in MB before loading
    and at its peak. Imports only numpy and the variant's runtime. Raises DeployError as `runner` does."""
    tasks = _tasks()
    batches, _ = dev_batches(dev, batch_size)
    before = peak_rss_mb()
    started = time.perf_counter()
    run = runner(directory, threads)
    load_seconds = time.perf_counter() - started
    predictions = np.concatenate([tasks.predictions_of(run(b)) for b in batches])
    return {"predictions": predictions.tolist(), "load_seconds": load_seconds, "rss_before_load_mb": before,
            "peak_rss_mb": peak_rss_mb()}


def with_metrics(predicted: dict, dev: Path) -> dict:
    """`predict`'s answer with the task's metrics under their standard names (fractions or correlations),
    scored against the labels `write_dev` wrote."""
    data = np.load(dev)
    metrics = tuple(str(m) for m in data["metrics"])
    return {**_tasks().compute_metrics(metrics, np.asarray(predicted["predictions"]), data["labels"]), **predicted}


def evaluate(directory: Path, dev: Path, threads: int, batch_size: int = 64) -> dict:
    """`predict` scored: the task's metrics beside the predictions, load time and memory."""
    return with_metrics(predict(directory, dev, threads, batch_size), dev)


def evaluate_in_fresh_process(directory: Path, dev: Path, threads: int, batch_size: int = 64) -> dict:
    """`evaluate`, its predictions made in a new Python process: the variant must load from its files
    alone, and the process's memory is the runtime's and the model's (the metrics, which import scipy and
    scikit-learn, are computed here)."""
    import subprocess
    # This file run as a script, not `-m pruning.deploy.runtimes`: the package would import torch and transformers,
    # whose memory an ONNX Runtime deployment does not pay.
    done = subprocess.run([sys.executable, __file__, str(directory), str(dev), str(threads), str(batch_size)],
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise DeployError(f"{directory} failed to load or run in a fresh process:\n{done.stderr.strip()[-2000:]}")
    return with_metrics(json.loads(done.stdout.strip().splitlines()[-1]), dev)


if __name__ == "__main__":
    _quiet()
    variant, dev_path, n_threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(predict(Path(variant), Path(dev_path), n_threads, batch)))
