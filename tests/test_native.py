"""Tests for hscc_core.compress.native: region programs of both cluster sides, the compiled kernel
against the reference forward, honest FLOPs, and the PyTorch fallback."""

import copy
from functools import lru_cache

import pytest
import torch

from conftest import conv_stack, hscc_decomposition, hscc_model, layer_tensor, random_images, region_modules
from hscc_core.compress import native
from hscc_core.compress.native.program import STEP_FIELDS, panels, tail_split
from hscc_core.compress.hscc import build_hscc, plan_at_energy
from hscc_core.compress.hscc.sequential import cross_stats, fit_sequential
from hscc_core.measure.costs import count_flops, layer_flops
from hscc_core.nn.grey import fold_grey_input, input_channels

SHAPE = (1, 3, 48, 48)


def model_with_dead_channels() -> torch.nn.Module:
    """conv_stack (odd 5 x 5 maps after the stride-4 layer, a dilated 'same' layer) with three
    output channels of layer "2" constant and negative: rank-0 channels on the output side, dead
    (inactive) inputs of layer "4" on the input side."""
    model = conv_stack()
    with torch.no_grad():
        model[2].weight[:3] = 0
        model[2].bias[:3] = -1.0
    return model


@lru_cache(maxsize=None)  # built once per case for the whole file; tests that change weights copy
def compressed(side: str, grid: int, clusters: int, energy: float):
    model, x = model_with_dead_channels(), random_images(12)
    x[:, :, :20, :20] = 0  # calibration sees nothing top left: constant regions in layer "0"
    comp, _ = hscc_model(model, x, side, grid, clusters, energy)
    return model, comp, region_modules(comp), x


CASES = [("output", 3, 3, 0.6), ("output", 8, 4, 1.0), ("output", 1, 1, 0.9),
         ("input", 3, 3, 0.6), ("input", 8, 4, 1.0), ("input", 1, 1, 0.9)]


@pytest.fixture(scope="module")
def kernel():
    if not native.build():
        pytest.skip(f"native kernel not buildable here: {native.status()['reason']}")
    return native


def test_layouts_cover_rank0_dense_and_clamped_grids():
    """The cases below really contain what the tests claim to cover."""
    seen = {"rank0": False, "dense": False, "clamped": False, "const_region": False}
    split, seg = STEP_FIELDS.index("split"), STEP_FIELDS.index("seg")
    for side, grid, clusters, energy in CASES:
        _, comp, layers, _ = compressed(side, grid, clusters, energy)
        for layer in layers.values():
            prog = native.lower(layer)
            # last weight panels folding 2, 4 and 8 source columns into their lanes, on both
            # sides, in runs of source columns that leave single columns over
            steps = native.pack(prog).steps
            for g in (2, 4, 8):
                seen[f"{side} split {g}"] = seen.get(f"{side} split {g}", False) or bool(
                    (steps[:, split] == g).any())
            seen[f"{side} leftover"] = seen.get(f"{side} leftover", False) or bool(
                (steps[:, seg] % steps[:, split] != 0).any())
            seen["clamped"] |= tuple(layer.grid_hw) != (grid, grid)
            seen["rank0"] |= any(r.const_channels.numel() and r.ny for r in prog.regions)
            seen["const_region"] |= any(not r.steps for r in prog.regions)
            seen["dense"] |= any(s.src == 0 and s.dst == 2 for r in prog.regions for s in r.steps)
    assert all(seen.values()) and len(seen) == 12, seen


def test_split_panels_hold_the_same_weights():
    """A split last panel is a permutation of the step's weights (nothing padded or dropped): per
    run of source columns, folded rows of w x split floats, then the run's leftover columns."""
    assert [tail_split(m) for m in (16, 32, 9, 21, 20, 18, 17)] == [1, 1, 1, 2, 4, 8, 8]
    w = torch.randn(21, 14)  # panels of 16 and 5 columns; two runs of 7 columns (3 folded pairs + 1)
    flat = panels(w, 2, 7)
    assert torch.equal(flat[:16 * 14], w[:16].T.reshape(-1))
    tail = flat[16 * 14:].view(2, 7 * 5)
    for run, s0 in zip(tail, (0, 7)):
        assert torch.equal(run[:30].view(3, 5, 2).permute(1, 0, 2).reshape(5, 6), w[16:, s0:s0 + 6])
        assert torch.equal(run[30:], w[16:, s0 + 6])


@pytest.mark.parametrize("case", CASES)
def test_program_macs_and_interpreter_match_the_layer(case):
    """lower() is side-neutral and exact: its MACs are the analytical MACs and its pure-PyTorch
    interpretation equals the reference forward (no compiled code involved)."""
    model, comp, layers, x = compressed(*case)
    for name, layer in layers.items():
        prog = native.lower(layer)
        assert prog.macs() == layer.analytical_macs() == native.pack(prog).macs_per_image
        xi = layer_tensor(comp, name, x[:5], side="input")
        with torch.no_grad():
            torch.testing.assert_close(native.execute(prog, xi), layer.forward_reference(xi), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [1, 7])
def test_kernel_equals_reference(kernel, case, batch):
    model, comp, layers, x = compressed(*case)
    for name, layer in layers.items():
        xi = layer_tensor(comp, name, x[:batch], side="input")
        with torch.no_grad():
            ref = layer.forward_reference(xi)
            assert native.usable(layer, xi)
            # NCHW and channels_last memory; the kernel's tile size and many small tiles (region
            # and image edges inside one tile); the AVX-512 code and the portable one (BLAS, scalar
            # write-out: what CPUs without AVX-512 run)
            for fmt in (torch.contiguous_format, torch.channels_last):
                for tile in (0, 8):
                    for panel in (-1, 0):
                        out = native.run(layer, xi.contiguous(memory_format=fmt), tile_rows=tile, panel_rows=panel)
                        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            # a non-contiguous input is read through its strides
            wide = torch.cat([xi, xi], dim=3)[..., ::2]
            torch.testing.assert_close(native.run(layer, wide), layer.forward_reference(wide), rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # the whole model through the modules' hook
            with native.disabled():
                fallback = comp(x[:batch])
            torch.testing.assert_close(comp(x[:batch]), fallback, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_work_buffers_left_by_an_earlier_call_are_never_read(kernel, case):
    """The kernel keeps each thread's work buffers (im2col tile, Z, Y) from call to call. Fill them
    with NaN (the same layer on a NaN input, same threads and tiles), then the layer must still
    equal its reference: every element this call reads, it wrote first."""
    model, comp, layers, x = compressed(*case)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # both OpenMP threads' buffers poisoned and then used
    try:
        for name, layer in layers.items():
            for batch in (1, 7):
                xi = layer_tensor(comp, name, x[:batch], side="input")
                with torch.no_grad():
                    ref = layer.forward_reference(xi)
                    for tile in (0, 8):
                        for panel in (-1, 0):
                            native.run(layer, torch.full_like(xi, float("nan")), tile_rows=tile, panel_rows=panel)
                            out = native.run(layer, xi, tile_rows=tile, panel_rows=panel)
                            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_wide_scattered_input_clusters_gather_exactly(kernel):
    """Input-side clusters of more than 16 scattered channels: the im2col gathers them 16 at a time
    (AVX-512) plus a masked tail; the result equals the reference and the portable scalar gather."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 48, 3, 1, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(48, 24, 3, 1, 1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 4)).eval()
    x = random_images(16, size=20)
    comp, _ = hscc_model(model, x, "input", 2, 2, 0.9, layers=["2"])
    layer = region_modules(comp)["2"]
    packed = native.pack(native.lower(layer))
    widths = []
    for reg in packed.regions.tolist():
        gather = packed.gather[reg[4]:reg[4] + reg[5]].tolist()
        for s, e in packed.groups[reg[6]:reg[6] + reg[7]].tolist():
            if any(b != a + 1 for a, b in zip(gather[s:e], gather[s + 1:e])):
                widths.append(e - s)
    assert any(w > 16 and w % 16 for w in widths), widths  # full vectors and a tail, scattered
    xi = layer_tensor(comp, "2", x[:3], side="input")
    with torch.no_grad():
        ref = layer.forward_reference(xi)
        for panel in (-1, 0):
            torch.testing.assert_close(native.run(layer, xi, panel_rows=panel), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["output", "input"])
def test_write_out_of_rows_up_to_and_above_64_columns(kernel, side):
    """The write-out picks a row's channels from Y by permutes when Y has at most 64 columns (two
    vectors per half) and by a gather above: 64 and 72 output channels exercise both paths, and
    the boundary between them, against the reference and the portable scalar write-out."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, 1, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(64, 72, 3, 1, 1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(72, 4)).eval()
    x = random_images(16, size=12)
    comp, _ = hscc_model(model, x, side, 2, 3, 0.9)
    widths = set()
    for name, layer in region_modules(comp).items():
        widths.update(native.pack(native.lower(layer)).regions[:, 11].tolist())  # Y columns per region
        xi = layer_tensor(comp, name, x[:3], side="input")
        with torch.no_grad():
            ref = layer.forward_reference(xi)
            for panel in (-1, 0):
                torch.testing.assert_close(native.run(layer, xi, panel_rows=panel), ref, rtol=1e-5, atol=1e-5)
    assert any(32 < w <= 64 for w in widths) and any(64 < w <= 80 for w in widths), widths


@pytest.mark.parametrize("side", ["output", "input"])
def test_flops_unchanged_by_the_kernel(kernel, side):
    """FlopCounterMode sees the opaque call through its FLOP formula: 2 x analytical MACs."""
    _, comp, layers, _ = compressed(side, 3, 3, 0.6)
    names = list(layers)
    with native.disabled():
        fallback = layer_flops(comp, names, SHAPE), count_flops(comp, SHAPE)
    counted = layer_flops(comp, names, SHAPE), count_flops(comp, SHAPE)
    assert counted == fallback
    assert all(counted[0][n] == 2 * layers[n].analytical_macs() for n in names)
    assert native.kernel_of(comp) == "native"
    with native.disabled():
        assert native.kernel_of(comp) == "pytorch"
    assert native.kernel_of(model_with_dead_channels()) == "none"


def test_program_follows_new_weights(kernel):
    """The lowered program is cached per layer and redone when a weight changes."""
    _, comp, layers, x = compressed("output", 3, 3, 0.6)
    name = next(iter(layers))
    comp = copy.deepcopy(comp)
    layer = comp.get_submodule(name)
    xi = layer_tensor(comp, name, x[:2], side="input")
    with torch.no_grad():
        before = native.run(layer, xi)
        for p in layer.parameters():
            p.mul_(0.5)
        after = native.run(layer, xi)
        torch.testing.assert_close(after, layer.forward_reference(xi), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(before, after)
        # a parameter replaced by another object, and one whose data was swapped (no version bump)
        for change in ("replace", "data"):
            owner = next(m for m in layer.modules() if m._parameters.get("weight") is not None)
            new = owner.weight.detach() * 0.25
            if change == "replace":
                owner.weight = torch.nn.Parameter(new)
            else:
                owner.weight.data = new
            torch.testing.assert_close(native.run(layer, xi), layer.forward_reference(xi), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["output", "input"])
def test_fallback_when_the_kernel_is_unavailable(monkeypatch, side):
    """No build (forced): forward takes the PyTorch path, results and FLOPs unchanged."""
    _, comp, layers, x = compressed(side, 3, 3, 0.6)
    with torch.no_grad():
        expected = comp(x[:3])

    def refuse(*args, **kwargs):
        raise AssertionError("the native kernel must not run")

    monkeypatch.setitem(native._state, "loaded", False)
    monkeypatch.setitem(native._state, "error", "not built (forced by the test)")
    monkeypatch.setattr(native, "run", refuse)
    assert not native.available() and native.status()["reason"] == "not built (forced by the test)"
    assert native.kernel_of(comp) == "pytorch"
    with torch.no_grad():
        torch.testing.assert_close(comp(x[:3]), expected, rtol=1e-5, atol=1e-5)
    assert layer_flops(comp, list(layers), SHAPE) == {n: 2 * m.analytical_macs() for n, m in layers.items()}


def test_gradients_and_tracing_take_the_pytorch_path(kernel, monkeypatch):
    _, comp, layers, x = compressed("input", 3, 3, 0.6)
    name = next(iter(layers))
    comp = copy.deepcopy(comp)  # trained below
    layer = comp.get_submodule(name)
    xi = layer_tensor(comp, name, x[:2], side="input")
    assert not native.usable(layer, xi)  # grad enabled and the weights require grad
    with torch.no_grad():
        assert native.usable(layer, xi)
        assert not native.usable(layer, xi.double())
        assert not native.usable(layer, xi[..., :-4])  # another map size: the layer's own error
        monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
        assert not native.usable(layer, xi)
    comp.train()
    comp(x[:2]).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_flops_counted_when_the_first_forward_is_a_counted_one(kernel):
    """In a fresh process the op's FLOP formula exists before any FlopCounterMode is created."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    code = (
        "import torch\n"
        "from conftest import conv_stack, hscc_model, random_images\n"
        "from hscc_core.measure.costs import count_flops\n"
        "m, x = conv_stack(), random_images(8)\n"
        "c, plan = hscc_model(m, x, 'output', 2, 2, 0.8)\n"
        "fl = count_flops(c, (1, 3, 48, 48)) - count_flops(m, (1, 3, 48, 48))\n"
        "orig = sum(2 * mod.analytical_macs() for mod in c.modules() if hasattr(mod, 'analytical_macs'))\n"
        "conv = 2 * sum(p.original_macs for p in [l.decomp for l in plan.layers.values()])\n"
        "print(fl + conv - orig)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": f"{root}:{root / 'tests'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) == 0


@pytest.mark.parametrize("side,grid,clusters", [("output", 3, 2), ("input", 3, 4)])
def test_kernel_equals_reference_after_fold_and_sequential_fit(kernel, side, grid, clusters):
    """The fidelity work's models reach the kernel too: conv1 folded to one grey input channel
    (input side: conv1's clusters are then single channels) and every later layer refitted
    sequentially (readout V != U, shifted input means, so other stage-1 weights and biases)."""
    model = fold_grey_input(conv_stack())
    assert input_channels(model) == 1
    x = random_images(24)[:, :1]
    plan = plan_at_energy(hscc_decomposition(model, x, side, grid, clusters), 0.7)

    def source(name, prefix, lp, ident):
        return cross_stats(model, prefix, name, lp, x, batch_size=12)

    fitted = fit_sequential(model, plan, source)
    comp = build_hscc(model, fitted)
    refit = [n for n, lp in fitted.layers.items()
             if any(b.readout is not None for reg in lp.decomp.regions for b in reg.blocks)]
    assert refit, "the sequential fit changed no block"
    for name, layer in region_modules(comp).items():
        xi = layer_tensor(comp, name, x[:5], side="input")
        with torch.no_grad():
            assert native.usable(layer, xi)
            ref = layer.forward_reference(xi)
            torch.testing.assert_close(native.run(layer, xi), ref, rtol=1e-5, atol=1e-5)
            if xi.shape[1] == 1:
                # A one-channel map's channel stride means nothing (PyTorch leaves H W there).
                h, w = xi.shape[-2:]
                for stride in (h * w, 1, 7):
                    odd = xi.contiguous().as_strided(xi.shape, (h * w, stride, w, 1))
                    torch.testing.assert_close(native.run(layer, odd), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        with native.disabled():
            fallback = comp(x[:5])
        torch.testing.assert_close(comp(x[:5]), fallback, rtol=1e-5, atol=1e-5)


def test_one_channel_maps_reach_the_kernel_as_channels_last(kernel, monkeypatch):
    """The folded grey conv1's (N, 1, H, W) input, whose channel stride PyTorch leaves at H W, is
    handed to the kernel with channel stride 1: channels-last as it is, so the kernel reads its tap
    rows in place (with H W it took the scalar gather: conv1 4x slower, docs/performance.md)."""
    x = torch.randn(3, 1, 9, 11)
    assert x.stride(1) == 99
    view = native.one_channel_view(x)
    assert view.stride(1) == 1 and view.data_ptr() == x.data_ptr() and torch.equal(view, x)
    assert view.is_contiguous(memory_format=torch.channels_last)
    three = torch.randn(3, 3, 9, 11)
    assert native.one_channel_view(three) is three

    model = fold_grey_input(conv_stack())
    images = random_images(12)[:, :1]
    comp, _ = hscc_model(model, images, "output", 2, 2, 0.8)
    first = next(iter(region_modules(comp).values()))
    assert first.in_channels == 1
    seen = []
    real = torch.ops.hscc_native.region_conv

    def spy(x, *args):
        seen.append(x.stride(1))
        return real(x, *args)

    monkeypatch.setattr(torch.ops.hscc_native, "region_conv", spy)
    with torch.no_grad():
        out = native.run(first, images[:2].contiguous())
        torch.testing.assert_close(out, first.forward_reference(images[:2]), rtol=1e-5, atol=1e-5)
    assert seen == [1]
