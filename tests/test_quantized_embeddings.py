"""Every embedding form is quantized as claimed, and counted as stored (issue 34, case 5; optimum#290).

ONNX Runtime's optimizer fused DistilBERT's embeddings into one EmbedLayerNormalization node, which neither of
its quantizers takes (they quantize Gather lookups): the int8 and 8/4-bit variants kept the 30522 x dim table
in fp32 while the byte count, which only followed Gathers, left it out. Tiny random-init models of the
families of `test_families` with a vocabulary large enough to tell the table apart (VOCAB rows)."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers import AutoModelForSequenceClassification

from pruning.deploy import runtimes
from test_families import config_of

VOCAB = 1000
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def exported(family: str, directory):
    """A tiny random-init classifier of `family` with a VOCAB-token vocabulary, exported to `directory`/fp32
    by `runtimes.export_onnx`; returns (its word-embedding table's shape, the fp32 directory)."""
    config = config_of(family)
    config.vocab_size = VOCAB
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = np.random.default_rng(0).integers(3, VOCAB, (2, 8)).astype(np.int64)
    probe = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in runtimes.model_inputs(model, ["input_ids"]):
        probe["token_type_ids"] = np.zeros_like(ids)
    (directory / "fp32").mkdir()
    runtimes.export_onnx(model, directory / "fp32", probe)
    return tuple(model.get_input_embeddings().weight.shape), directory / "fp32"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """`exported` once per family in this module: family -> (table shape, fp32 directory)."""
    done = {}

    def get(family: str):
        if family not in done:
            done[family] = exported(family, tmp_path_factory.mktemp(family))
        return done[family]
    return get


def graph_of(directory):
    return onnx.load(str(directory / runtimes.ONNX_FILE)).graph


def word_lookup(graph):
    """The one node that reads `input_ids` as lookup indices in these graphs (no remap table)."""
    nodes = [n for n in graph.node if "input_ids" in n.input]
    assert len(nodes) == 1, [n.op_type for n in nodes]
    return nodes[0]


def stored_bytes(graph, names) -> int:
    """What the named initializers hold as written: the length of their raw data, or for one written as typed
    values (a scalar scale or zero point), its values' bytes in its data type."""
    inits = {i.name: i for i in graph.initializer}
    return sum(len(inits[n].raw_data) if inits[n].raw_data else numpy_helper.to_array(inits[n]).nbytes
               for n in names)


def lookup_tensors(graph) -> list[str]:
    """The initializers the word lookup reads (its table, and per-block scales and zero points), and the scale
    and zero point of the DequantizeLinear that follows an int8 lookup: found by hand for these graphs."""
    inits = {i.name for i in graph.initializer}
    node = word_lookup(graph)
    names = [i for i in node.input if i in inits]
    for consumer in graph.node:
        if consumer.op_type == "DequantizeLinear" and consumer.input[0] == node.output[0]:
            names += [i for i in consumer.input[1:] if i in inits]
    return names


def float_tables(graph, rows: int, width: int) -> list[str]:
    """Floating-point initializers of the word table's size (rows x width, either way round)."""
    return [i.name for i in graph.initializer if i.data_type in FLOATS and sorted(i.dims) == sorted([rows, width])]


@pytest.mark.parametrize("family", ["distilbert", "bert", "modernbert"])
def test_int8_and_mixed_keep_no_float_word_table_and_count_its_stored_bytes(family, export, tmp_path):
    (rows, width), fp32 = export(family)
    graph = graph_of(fp32)
    assert word_lookup(graph).op_type == "Gather"  # DistilBERT's embeddings are no longer fused
    assert runtimes.word_embedding_bytes(fp32) == rows * width * 4 == stored_bytes(graph, lookup_tensors(graph))
    (tmp_path / "int8").mkdir()
    runtimes.quantize_int8(fp32, tmp_path / "int8")
    model = onnx.load(str(fp32 / runtimes.ONNX_FILE))
    embeddings = runtimes.embedding_gathers(model)
    matrices = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                and any(i in {t.name for t in model.graph.initializer} for i in n.input[1:2])]
    (tmp_path / "mixed").mkdir()
    runtimes.quantize_mixed(fp32, tmp_path / "mixed", four_bit=embeddings, eight_bit=matrices, block_size=32)
    for name, op, codes in (("int8", "Gather", (TensorProto.INT8, TensorProto.UINT8)),
                            ("mixed", "GatherBlockQuantized", (TensorProto.INT4, TensorProto.UINT4))):
        graph = graph_of(tmp_path / name)
        assert not float_tables(graph, rows, width), name
        assert not runtimes.float_word_tables(graph), name
        lookup = word_lookup(graph)
        table = {i.name: i for i in graph.initializer}[lookup.input[0]]
        assert lookup.op_type == op and table.data_type in codes, (name, lookup.op_type, table.data_type)
        # the reported bytes are those the written initializers hold, scales and zero points included
        assert runtimes.word_embedding_bytes(tmp_path / name) == stored_bytes(graph, lookup_tensors(graph)), name
        assert runtimes.word_embedding_bytes(tmp_path / name) < rows * width * 4 / 3, name


def test_a_fused_embedding_lookup_is_counted_and_refused_not_left_in_fp32(export, tmp_path):
    """A graph whose word lookup ONNX Runtime fused into EmbedLayerNormalization (as it did DistilBERT's before
    `export_onnx` turned that fusion off; a graph made elsewhere still may be): its table is counted, and
    quantizing it is refused naming the node, instead of a variant that claims int8 embeddings in fp32."""
    from onnxruntime.transformers.optimizer import optimize_model
    (rows, width), fp32 = export("distilbert")
    fused = tmp_path / "fused"
    fused.mkdir()
    optimize_model(str(fp32 / runtimes.ONNX_FILE), model_type="bert", num_heads=0,
                   hidden_size=0).save_model_to_file(str(fused / runtimes.ONNX_FILE))
    graph = graph_of(fused)
    [lookup] = [n for n in graph.node if n.op_type == "EmbedLayerNormalization"]  # its ids: input_ids cast to int32
    assert not [n for n in graph.node if n.op_type == "Gather" and "input_ids" in n.input]
    assert runtimes.word_embedding_bytes(fused) == rows * width * 4  # the table the Gather-only count missed
    assert list(runtimes.float_word_tables(graph)) == [lookup.input[2]]
    (tmp_path / "int8").mkdir()
    with pytest.raises(runtimes.DeployError, match="looked up by EmbedLayerNormalization node"):
        runtimes.quantize_int8(fused, tmp_path / "int8")
    with pytest.raises(runtimes.DeployError, match="looked up by EmbedLayerNormalization node"):
        runtimes.embedding_gathers(onnx.load(str(fused / runtimes.ONNX_FILE)))
    with pytest.raises(runtimes.DeployError, match="no MatMul or Gemm or Gather node"):
        runtimes.quantize_mixed(fused, tmp_path / "int8", four_bit=[], eight_bit=[lookup.name])


def test_stored_bytes_follow_the_data_type():
    def tensor(data_type, dims):
        return helper.make_tensor("t", data_type, dims, np.zeros(int(np.prod(dims)), dtype=np.int64).tolist())
    assert runtimes.tensor_bytes(tensor(TensorProto.FLOAT, [10, 3])) == 120
    assert runtimes.tensor_bytes(tensor(TensorProto.INT8, [10, 3])) == 30
    assert runtimes.tensor_bytes(tensor(TensorProto.UINT4, [10, 3])) == 15
    assert runtimes.tensor_bytes(tensor(TensorProto.INT4, [7])) == 4  # half bytes round up
    assert runtimes.tensor_bytes(tensor(TensorProto.FLOAT16, [])) == 2  # a scalar
