"""Tests for hscc_core.measure.costs: FlopCounterMode FLOPs, params, latency bookkeeping."""

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from hscc_core.measure.costs import count_flops, count_params, layer_flops, measure_latency, speedup

torch.set_num_threads(2)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 16, 5, 2, 2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 4))

    def forward(self, x):
        return self.head(self.features(x))


def test_flops_closed_form():
    net = Net()
    c1 = 16 * 16 * 8 * 3 * 9
    c2 = 8 * 8 * 16 * 8 * 25
    fc = 16 * 8 * 8 * 4
    assert count_flops(net, (1, 3, 16, 16)) == 2 * (c1 + c2 + fc)
    assert count_flops(net, (3, 3, 16, 16)) == 6 * (c1 + c2 + fc)
    assert layer_flops(net, ["features.0", "features.2", "head.1", "features"], (1, 3, 16, 16)) == {
        "features.0": 2 * c1, "features.2": 2 * c2, "head.1": 2 * fc, "features": 2 * (c1 + c2)}


def test_layer_flops_include_replaced_children():
    net = Net()
    net.features[2] = nn.Sequential(nn.Conv2d(8, 4, 5, 2, 2, bias=False), nn.Conv2d(4, 16, 1))
    got = layer_flops(net, ["features.2"], (1, 3, 16, 16))["features.2"]
    assert got == 2 * 8 * 8 * (4 * 8 * 25 + 16 * 4)


def test_params():
    assert count_params(Net()) == (8 * 27 + 8) + (16 * 200 + 16) + (1024 * 4 + 4)


def test_latency_shape_and_modes():
    a, b = Net().train(), nn.Sequential(Net().features, Net().head).eval()
    lat = measure_latency({"original": a, "compressed": b}, (1, 3, 16, 16), batch_sizes=(1, 4), runs=5, warmup=1)
    assert lat["device"] == "cpu" and lat["runs"] == 5 and lat["cuda_graphs"] is False and lat["tf32"] is False
    assert set(lat["models"]) == {"original", "compressed"}
    for per in lat["models"].values():
        assert set(per) == {"b1", "b4"}
        for v in per.values():
            assert 0 < v["median_ms"] <= v["p90_ms"]
            assert "graph_median_ms" not in v  # CUDA graphs are a GPU-only timing
    assert a.training and not b.training  # modes restored
    a.features[0].eval()
    measure_latency({"a": a}, (1, 3, 16, 16), batch_sizes=(1,), runs=1, warmup=0)
    assert a.training and not a.features[0].training  # mixed modes restored per module
    s = speedup(lat, "original", "original")
    assert s == {"b1": 1.0, "b4": 1.0}
    assert set(speedup(lat, "original", "compressed")) == {"b1", "b4"}
    with pytest.raises(ValueError):
        measure_latency({"a": a}, (1, 3, 16, 16), runs=0)


def test_others_share_of_the_cpus(monkeypatch):
    from hscc_core.measure.machine import CpuSnapshot, cpu_snapshot, others_share

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    start = CpuSnapshot(wall=100.0, machine_busy=50.0, own=10.0)
    # 2 s on 2 cores: this process used 4 CPU seconds and nothing else ran: quiet.
    assert others_share(start, CpuSnapshot(102.0, 54.0, 14.0)) == 0.0
    # Another process kept one core busy meanwhile: half the machine.
    assert others_share(start, CpuSnapshot(102.0, 56.0, 14.0)) == pytest.approx(0.5)
    assert others_share(start, CpuSnapshot(102.0, 70.0, 14.0)) == 1.0  # clamped (tick rounding, hypervisor)
    assert others_share(None, start) is None and others_share(start, start) is None
    assert others_share(start, CpuSnapshot(100.5, 51.0, 11.0)) is None  # too short for 10-ms ticks
    snap = cpu_snapshot()  # Linux: read from /proc/stat; elsewhere None
    assert snap is None or (snap.machine_busy > 0 and snap.own > 0)


def test_latency_records_what_else_ran_and_warns_once_when_busy(monkeypatch):
    from hscc_core.measure import costs

    net = Net().eval()
    lat = measure_latency({"a": net}, (1, 3, 16, 16), batch_sizes=(1,), runs=2, warmup=0)
    assert lat["others_cpu"] is None or 0.0 <= lat["others_cpu"] <= 1.0
    monkeypatch.setattr(costs, "_warned_busy", False)
    monkeypatch.setattr(costs, "others_share", lambda before, after: 0.6)
    with pytest.warns(costs.BusyMachineWarning, match="60% of the CPUs"):
        busy = measure_latency({"a": net}, (1, 3, 16, 16), batch_sizes=(1,), runs=1, warmup=0)
    assert busy["others_cpu"] == 0.6
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second busy timing of the process stays quiet
        assert measure_latency({"a": net}, (1, 3, 16, 16), batch_sizes=(1,), runs=1, warmup=0)["others_cpu"] == 0.6
    monkeypatch.setattr(costs, "_warned_busy", False)
    monkeypatch.setattr(costs, "others_share", lambda before, after: 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a quiet machine warns nothing
        measure_latency({"a": net}, (1, 3, 16, 16), batch_sizes=(1,), runs=1, warmup=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_latency_on_gpu_times_eager_and_cuda_graphs():
    a, b = Net().cuda(), nn.Sequential(Net().features, Net().head).cuda()
    lat = measure_latency({"original": a, "compressed": b}, (1, 3, 16, 16), batch_sizes=(1, 4), runs=3, warmup=1)
    assert lat["device"] != "cpu" and lat["cuda_graphs"] is True
    for per in lat["models"].values():
        for v in per.values():
            assert 0 < v["median_ms"] <= v["p90_ms"] and 0 < v["graph_median_ms"] <= v["graph_p90_ms"]


def test_latency_is_timed_in_float32_and_restores_tf32_flags():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return x

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        measure_latency({"probe": Probe()}, (1, 3, 4, 4), batch_sizes=(1,), runs=2, warmup=1)
        assert seen and set(seen) == {(False, False)}  # every model alike, whatever the defaults
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class LayoutProbe(nn.Module):
    """Records, at each call, whether its conv's weight and its input have channels-last strides."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv, self.seen = conv, []

    def forward(self, x):
        cl = lambda t: t.stride() == torch.empty_like(t, memory_format=torch.channels_last).stride()  # noqa: E731
        self.seen.append((cl(self.conv.weight), cl(x)))
        return self.conv(x)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_latency_times_every_plain_conv_channels_last_and_restores(in_channels):
    # One input channel is the grey conv1: its NCHW weight passes is_contiguous(channels_last), yet
    # PyTorch then returns an NCHW map; the layout is judged by the full strides.
    torch.manual_seed(0)
    probe = LayoutProbe(nn.Conv2d(in_channels, 8, 3, padding=1))
    model = nn.Sequential(probe, nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3))
    weights = [(m.weight, m.weight.data_ptr(), m.weight.stride()) for m in model if isinstance(m, nn.Conv2d)]
    x = torch.randn(2, in_channels, 12, 12)
    before = model(x)
    probe.seen.clear()
    lat = measure_latency({"original": model}, (1, in_channels, 12, 12), batch_sizes=(1, 2), runs=2, warmup=1)
    assert lat["memory_format"] == "channels_last"
    assert probe.seen and set(probe.seen) == {(True, True)}
    for w, ptr, stride in weights:  # the caller's tensors are back
        assert w.data_ptr() == ptr and w.stride() == stride
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_latency_leaves_layers_with_their_own_layout_alone():
    from hscc_core.compress import native
    from tests.conftest import cnn, hscc_model, random_images

    model = cnn()
    # The input side's per-cluster stage-1 weights are NCHW and its PyTorch path views them as
    # matrices: converting them would break that path (and re-lower the native program twice).
    hscc, _ = hscc_model(model, random_images(16, 32), "input", 2, 2, 0.9)
    own = {name: (p.data_ptr(), p.stride()) for name, p in hscc.named_parameters() if p.dim() == 4}
    assert any(p.stride() != torch.empty_like(p, memory_format=torch.channels_last).stride()
               for p in hscc.parameters() if p.dim() == 4)
    for path in (nullcontext, native.disabled):  # the native kernel where built, then the PyTorch path
        with path():
            lat = measure_latency({"original": model, "compressed": hscc}, (1, 3, 32, 32), batch_sizes=(1, 3),
                                  runs=2, warmup=1)
        assert set(lat["models"]) == {"original", "compressed"}
    assert {name: (p.data_ptr(), p.stride()) for name, p in hscc.named_parameters() if p.dim() == 4} == own
