"""A batch run in parts: which nets compute each image on its own (sfport.netdef.graph.images_apart, each
converter's images_apart), against what the nets do (each image run alone against the whole batch), and the
Runner on the CPU running a batch in parts that fit the cache, against the plain net on the whole batch."""
import numpy as np
import pytest

from sfport.netdef.graph import images_apart
from sfport.runtime import backend as backend_mod
from sfport.runtime.backend import Runner
from sfport.runtime.net import Net

from netcases import layer
from test_optimize import _net

SHAPE = (3, 4, 6, 5)
CONV = 'convolution_param { num_output: 8 kernel_size: 3 pad: 1 }'

CASES = {   # name: (body, whether each image is computed alone)
    "conv_prelu_pool_ip": (layer("c", "Convolution", ["data"], ["c"], CONV) + layer("r", "PReLU", ["c"], ["c"])
                           + layer("p", "Pooling", ["c"], ["p"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
                           + layer("f", "InnerProduct", ["p"], ["f"], "inner_product_param { num_output: 6 }"), True),
    "softmax_channels": (layer("s", "Softmax", ["data"], ["s"]), True),
    "concat_channels": (layer("c", "Convolution", ["data"], ["c"], CONV)
                        + layer("j", "Concat", ["data", "c"], ["j"]), True),
    "reshape_copying_the_batch": (layer("r", "Reshape", ["data"], ["r"], "reshape_param { shape { dim: 0 dim: -1 } }"),
                                  True),
    "batchnorm_stored_statistics": (layer("b", "BatchNorm", ["data"], ["b"]), True),
    "permute_batch_first": (layer("p", "Permute", ["data"], ["p"], "permute_param { order: 0 order: 2 order: 3 "
                                                                  "order: 1 }"), True),
    "argmax_per_sample": (layer("a", "ArgMax", ["data"], ["a"], "argmax_param { top_k: 2 }"), True),
    "lrn_mvn_eltwise": (layer("l", "LRN", ["data"], ["l"]) + layer("m", "MVN", ["data"], ["m"])
                        + layer("e", "Eltwise", ["l", "m"], ["e"]), True),
    "softmax_over_the_batch": (layer("s", "Softmax", ["data"], ["s"], "softmax_param { axis: 0 }"), False),
    "batchnorm_batch_statistics": (layer("b", "BatchNorm", ["data"], ["b"],
                                         "batch_norm_param { use_global_stats: false }"), False),
    "inner_product_from_axis_0": (layer("f", "InnerProduct", ["data"], ["f"], "inner_product_param { num_output: 4 "
                                                                              "axis: 0 }"), False),
    "reduction_of_everything": (layer("r", "Reduction", ["data"], ["r"]), False),
    "concat_batches": (layer("c", "Convolution", ["data"], ["c"], 'convolution_param { num_output: 4 kernel_size: 1 }')
                       + layer("j", "Concat", ["data", "c"], ["j"], "concat_param { axis: 0 }"), False),
    "scale_from_axis_0": (layer("s", "Scale", ["data"], ["s"], "scale_param { axis: 0 num_axes: 1 }"), False),
    "reshape_stating_the_batch": (layer("r", "Reshape", ["data"], ["r"], "reshape_param { shape { dim: 3 dim: -1 } }"),
                                  False),
}


def _each_image_alone(m) -> bool:
    """What the net does: every output's row n, run on the whole batch, is what image n run alone gives (within
    1e-5); a net that cannot run one image alone, or gives another shape, does not compute them alone."""
    x = np.random.default_rng(3).uniform(-1, 1, SHAPE).astype(np.float32)
    whole = {k: v.detach().numpy().copy() for k, v in Net(m).forward(data=x).items()}
    for i in range(SHAPE[0]):
        try:
            alone = Net(m, input_shapes={"data": (1,) + SHAPE[1:]}).forward(data=x[i:i + 1])
        except Exception:   # noqa: BLE001 - weights or shapes made for the whole batch
            return False
        for k, v in alone.items():
            v = v.detach().numpy()
            if whole[k].shape[:1] != SHAPE[:1] or whole[k].shape[1:] != v.shape[1:]:
                return False
            if np.abs(whole[k][i] - v[0]).max() > 1e-5 * max(1.0, np.abs(v).max()):
                return False
    return True


@pytest.mark.parametrize("case", sorted(CASES))
def test_images_apart_is_what_the_net_does(case):
    body, apart = CASES[case]
    m = _net(body, SHAPE)
    assert images_apart(Net(m).graph) is apart
    assert _each_image_alone(m) is apart


def _cache_of(monkeypatch, nbytes):
    monkeypatch.setattr(backend_mod, "last_level_cache", lambda: nbytes)


def _calls(runner, monkeypatch):
    """The batch size of each run of the runner's backend: its eager net's, or onnxruntime's session's."""
    sizes = []
    if runner.backend == "torch":
        real = runner.net.module.run
        runner.net.module.run = lambda inputs: sizes.append(len(next(iter(inputs.values())))) or real(inputs)
    else:
        real = backend_mod.run_session
        monkeypatch.setattr(backend_mod, "run_session", lambda s, o, i, x: sizes.append(len(x)) or real(s, o, i, x))
    return sizes


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_runner_runs_a_batch_in_even_parts_that_fit_the_cache(monkeypatch, backend):
    """The largest layer, PReLU on 8 x 24 x 20, holds 2 x 3,840 floats an image: 30,720 bytes; a 100,000-byte cache
    takes 3 images, and 8 run as 3 + 3 + 2, the outputs those of the plain net on the whole batch."""
    body = (layer("c", "Convolution", ["data"], ["c"], CONV) + layer("r", "PReLU", ["c"], ["r"])
            + layer("p", "Pooling", ["r"], ["p"], "pooling_param { pool: AVE kernel_size: 2 stride: 2 }")
            + layer("f", "InnerProduct", ["p"], ["f"], "inner_product_param { num_output: 5 }"))
    m = _net(body, (1, 3, 24, 20))
    _cache_of(monkeypatch, 100_000)
    runner = Runner(Net(m), ["f"], backend=backend)
    assert runner.part == 3 and runner.backend == backend
    sizes = _calls(runner, monkeypatch)
    x = np.random.default_rng(4).uniform(-1, 1, (8, 3, 24, 20)).astype(np.float32)
    got = runner(x)["f"]
    assert sizes == [3, 3, 2]
    plain = Net(m, input_shapes={"data": x.shape})
    want = plain.forward(data=x)["f"].detach().numpy()
    assert got.shape == want.shape == (8, 5)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    sizes.clear()
    runner(x[:3])
    assert sizes == [3]
    assert Runner(Net(m), ["f"], backend=backend, any_size=True).part is None   # other sizes: whole batches


def test_openvino_runs_a_batchs_parts_at_once_where_that_compilation_agrees(monkeypatch):
    """On OpenVINO the parts of a batch run at once on a second compilation (one stream each), checked once against
    the eager net; the outputs those of the plain net on the whole batch. A compilation that disagrees is let go
    and the parts run one after another on the first."""
    pytest.importorskip("openvino")
    body = (layer("c", "Convolution", ["data"], ["c"], CONV) + layer("r", "PReLU", ["c"], ["r"])
            + layer("f", "InnerProduct", ["r"], ["f"], "inner_product_param { num_output: 5 }"))
    m = _net(body, (1, 3, 24, 20))
    _cache_of(monkeypatch, 100_000)
    x = np.random.default_rng(6).uniform(-1, 1, (8, 3, 24, 20)).astype(np.float32)
    want = Net(m, input_shapes={"data": x.shape}).forward(data=x)["f"].detach().numpy()
    runner = Runner(Net(m), ["f"], backend="openvino")
    assert runner.part == 3
    at_once, one = [], []
    run_parts, run = backend_mod.OpenVINO.run_parts, backend_mod.OpenVINO.run
    monkeypatch.setattr(backend_mod.OpenVINO, "run_parts",
                        lambda self, o, i, parts: at_once.append([len(p) for p in parts]) or run_parts(self, o, i, parts))
    monkeypatch.setattr(backend_mod.OpenVINO, "run", lambda self, o, i, x: one.append(len(x)) or run(self, o, i, x))
    got = runner(x)["f"]
    assert at_once == [[1], [3, 3, 2]] and one == []    # the check batch of one, then the parts
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert runner.session._streams is not None
    at_once.clear()
    runner(x[:3])            # one part: the first compilation
    assert at_once == [] and one == [3]

    def off(self, o, i, parts):   # a compilation whose numbers are off
        return [{k: v + 1e-3 for k, v in out.items()} for out in run_parts(self, o, i, parts)]

    monkeypatch.setattr(backend_mod.OpenVINO, "run_parts", off)
    runner = Runner(Net(m), ["f"], backend="openvino")   # (its first compilation checked on a batch of one)
    one.clear()
    got = runner(x)["f"]
    assert runner.session._streams is None and one == [3, 3, 2]
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    runner(x)
    assert one == [3, 3, 2] * 2   # never asked again


def test_a_net_that_mixes_images_runs_its_batch_whole(monkeypatch):
    body = (layer("c", "Convolution", ["data"], ["c"], CONV)
            + layer("s", "Softmax", ["c"], ["s"], "softmax_param { axis: 0 }"))
    m = _net(body, (1, 3, 24, 20))
    _cache_of(monkeypatch, 10_000)
    runner = Runner(Net(m), ["s"], backend="torch")
    assert runner.part is None
    sizes = _calls(runner, monkeypatch)
    x = np.random.default_rng(5).uniform(-1, 1, (8, 3, 24, 20)).astype(np.float32)
    got = runner(x)["s"]
    assert sizes == [8]
    want = Net(m, input_shapes={"data": x.shape}).forward(data=x)["s"].detach().numpy()
    assert np.abs(got - want).max() <= 1e-5
    np.testing.assert_allclose(got.sum(axis=0), 1.0, rtol=1e-5)   # a softmax over the batch: every column sums to 1


def test_last_level_cache_reads_the_highest_level(tmp_path, monkeypatch):
    for i, (level, size) in enumerate([(1, "32K"), (1, "32K"), (2, "1024K"), (3, "16384K")]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "level").write_text(f"{level}\n")
        (tmp_path / f"index{i}" / "size").write_text(f"{size}\n")
    monkeypatch.setattr(backend_mod, "CPU_CACHES", str(tmp_path))
    assert backend_mod.last_level_cache() == 16 << 20
    monkeypatch.setattr(backend_mod, "CPU_CACHES", str(tmp_path / "absent"))
    assert backend_mod.last_level_cache() == backend_mod.CACHE_BYTES_UNKNOWN
