"""The memory plan: buffers live at the same time never share bytes, and the report shows
exactly what the planner placed."""

import numpy as np
import pytest

import tilesim
from tilesim.errors import OutOfOffchipMemory, OutOfTileMemory
from tilesim.runtime.memplan import IN_PLACE_OPS


def lifetimes(nodes, output):
    first, last = {}, {}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            if name in first:
                last[name] = i
        if node.out and node.op not in IN_PLACE_OPS and node.out not in first:
            first[node.out] = last[node.out] = i
    last[output] = len(nodes)
    return first, last


@pytest.mark.parametrize(("arch", "tp"), [("llama", 3), ("gpt2", 2), ("gptj", 1), ("gpt_neox_sequential", 2)])
def test_activations_alive_together_never_overlap(tiny_model, arch, tp):
    model = tilesim.load(str(tiny_model(arch)), device=tilesim.Device("tiny", cores=tp), tp=tp)
    first, last = lifetimes(model.sp.nodes, model.graph.output)
    for layout in model.plan.layouts:
        spans = {
            n: (layout.offsets[n], layout.offsets[n] + layout.shapes[n][0] * layout.shapes[n][1] * 4) for n in first
        }
        names = list(spans)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                together = not (last[a] < first[b] or last[b] < first[a])
                apart = spans[a][1] <= spans[b][0] or spans[b][1] <= spans[a][0]
                assert apart or not together, f"{a} and {b} are alive together but share bytes"
        assert max(e for _, e in spans.values()) <= layout.total


def test_reuse_makes_the_activation_block_smaller_than_all_values_together(tiny_model):
    model = tilesim.load(str(tiny_model("llama")), device="tiny", tp=1)
    layout = model.plan.layouts[0]
    everything = sum(r * w * 4 for r, w in layout.shapes.values())
    assert layout.total < everything / 4


def test_the_memory_report_equals_what_the_planner_placed(tiny_model):
    model = tilesim.load(str(tiny_model("gpt2")), device=tilesim.Device("tiny", cores=3), tp=3)
    out = model.generate([[1, 2, 3]], max_new_tokens=2)
    for core, entry in enumerate(out.report["memory"]["per_core"]):
        placed = model.device.cores[core].memory.used_by_kind()
        assert entry["weights"] == placed["weights"] == model.plan.weights[core]
        assert entry["kv_cache"] == placed["kv_cache"] == model.plan.kv_cache[core]
        assert entry["activations"] == placed["activations"] == model.plan.activations[core]
    usage = np.array(out.trace.memory.tile_usage)
    assert usage.max() == out.report["memory"]["max_tile_bytes"]
    assert usage.sum(axis=1).tolist() == [model.device.cores[c].memory.regions["tiles"].used for c in range(3)]


def test_weights_live_where_the_preset_puts_them(tiny_model):
    ipu = tilesim.load(str(tiny_model("gpt2")), device=tilesim.Device("ipu-gc200", cores=1), tp=1)
    # tile memory: the weights, the KV cache, the activations and what a Poplar program holds beside them
    others = ipu.plan.kv_cache[0] + ipu.plan.activations[0] + sum(ipu.plan.reserved.values())
    assert ipu.plan.reserved == dict(ipu.device.spec.core.reserved)
    tiles = ipu.device.cores[0].memory.regions["tiles"]
    assert ipu.device.cores[0].memory.used_by_kind()["weights"] == tiles.used - others
    trn = tilesim.load(str(tiny_model("gpt2")), device=tilesim.Device("trn1", cores=1), tp=1)
    # off-chip: the weights, the KV cache, and what the Neuron runtime reserves (model code, DMA rings,
    # collectives, and each compiled bucket's program)
    reserved = sum(trn.plan.reserved.values())
    programs = len(trn.buckets.prefill) + len(trn.buckets.decode)
    assert reserved == sum(trn.device.spec.core.reserved.values()) + programs * 4 * 2**20
    assert reserved == (96 + 64 + 64 + 4 * programs) * 2**20
    assert trn.device.cores[0].memory.regions["offchip"].used == trn.plan.weights[0] + trn.plan.kv_cache[0] + reserved


@pytest.mark.parametrize(("arch", "tp"), [("llama", 3), ("gpt2", 2)])
def test_every_step_of_the_program_names_the_buffers_it_writes_and_the_arrays_are_those_bytes(tiny_model, arch, tp):
    """Program.writes(step, core): each node's output (an in-place op's input), with the shape,
    dtype, region and offset the plan gave it; the executor's arrays are views of those bytes."""
    model = tilesim.load(str(tiny_model(arch)), device=tilesim.Device("tiny", cores=tp), tp=tp)
    program = model.program
    for core in range(tp):
        block = next(b for c, b in model._session.blocks if c == core and b.kind == "activations")
        base = model.device.cores[core].memory.view(block, np.uint8, (block.nbytes,))
        for step in program.steps:
            written = program.writes(step, core)
            wanted = [n.inputs[0] if n.op in IN_PLACE_OPS else n.out for n in step.nodes]
            assert [b.value for b in written] == [w for w in wanted if w in program.buffers[core]]
            for buf in written:
                assert buf.shape == model.plan.layouts[core].shapes[buf.value]
                assert buf.offset == model.plan.layouts[core].offsets[buf.value]
                assert buf.region == model.plan.regions["activations"] and buf.dtype == "float32"
                array = model._session.acts[core][buf.value]
                assert array.shape == buf.shape
                assert np.shares_memory(array, base[buf.offset : buf.offset + buf.nbytes])
    made = {n.out for n in model.sp.nodes if n.out and n.op not in IN_PLACE_OPS}
    assert made <= set(program.buffers[0])


def test_an_ipu_spreads_every_tensor_over_its_tiles_by_category(tiny_model):
    """Poplar's linear mapping: each tensor's 64-byte grains dealt over all 1472 tiles, so no
    tile holds more than the mean plus one grain per tensor (the address mapping filled the
    first tiles and left the rest empty)."""
    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("ipu-gc200", cores=3), tp=3)
    out = model.generate([[1, 2, 3]], max_new_tokens=2)
    mem = out.trace.memory
    for core in range(3):
        region = model.device.cores[core].memory.regions["tiles"]
        usage = np.array(mem.tile_usage[core])
        assert usage.sum() == region.used
        assert usage.max() - usage.mean() <= 64 * len(region.blocks)
        kinds = mem.tile_kinds[core]
        assert (np.sum(list(kinds.values()), axis=0) == usage).all()
        assert {"weights", "kv_cache", "activations", *model.device.spec.core.reserved} <= set(kinds)
        for kind, nbytes in model.device.cores[core].memory.used_by_kind().items():
            assert sum(kinds[kind]) == nbytes


def test_a_model_too_big_for_its_ipus_is_told_how_many_it_needs_by_size():
    # Llama-2-7b in fp16: 6.74e9 x 2 bytes of weights (plus ~0.2 GB of KV cache and activations
    # over 4 IPUs) over 1472 x 624 KiB per IPU less the 116 MiB a Poplar program holds: 16.7 -> 17
    with pytest.raises(OutOfTileMemory, match="by size alone at least 17 cores") as raised:
        tilesim.load("llama-2-7b", device="ipu-gc200", tp=4, timing_only=True, max_context=64)
    assert str(raised.value).startswith("llama-2-7b does not fit on 4 core(s) of ipu-gc200")  # as named, not "llama"


def test_a_model_that_needs_more_cores_than_the_device_has_is_not_told_to_take_more():
    """BLOOM-176B in fp32 on trn1.32xlarge, its 112 heads padded to 128: 176e9 parameters and 8.2e9
    more for the padded heads' projections (4 x 14336^2 x 70 layers x 16/112), x 4 bytes = 687 GiB,
    over 16 GiB a core less the 252 MiB the Neuron runtime holds: at least 44 cores, and the instance
    has 32. It said "use a higher `tp` (by size alone at least 44 cores)", which the device refuses."""
    with pytest.raises(OutOfOffchipMemory) as raised:
        tilesim.load("bloom-176b", device="trn1.32xlarge", tp=32, timing_only=True, dtype="fp32", max_context=64,
                     pad_heads=True)  # fmt: skip
    text = str(raised.value)
    assert "by size alone it needs at least 44 cores, and trn1.32xlarge has at most 32" in text
    assert "higher `tp`" not in text


def test_fp32_weights_that_do_not_fit_are_told_a_16_bit_dtype_halves_them():
    """GPT-2 XL stored in fp32 on 8 IPUs: 1017 MiB of stage 0's weights do not fit its 897 MiB;
    in fp16 they do. The hint comes only where it helps: fp16 weights that do not fit get none."""
    with pytest.raises(OutOfTileMemory, match=r"the weights are fp32 here: dtype='fp16' \(or 'bf16'\) halves them"):
        tilesim.load("gpt2-xl", device="ipu-gc200", tp=1, pp=8, timing_only=True, batch=8, max_context=72)
    tilesim.load("gpt2-xl", device="ipu-gc200", tp=1, pp=8, timing_only=True, batch=8, max_context=72, dtype="fp16")
    with pytest.raises(OutOfTileMemory) as raised:
        tilesim.load("llama-2-7b", device="ipu-gc200", tp=4, timing_only=True, max_context=64)
    assert "fp32" not in str(raised.value)


def test_activations_too_big_for_tile_memory_are_counted_where_they_would_go():
    """Llama-2-7b, a 131,072-token context on 8 trn1 cores: its largest prefill's activations cannot
    be in a 24 MiB SBUF, so they go off-chip, and there, beside 1.57 GiB of weights and a KV cache
    of 2 x 32 layers x 131,072 positions x 512 x 2 bytes = 8 GiB, the core's 16 GiB are too few.
    That is the error: not gigabytes of tile memory asked of a core with megabytes."""
    with pytest.raises(
        OutOfOffchipMemory, match=r"of off-chip memory \(weights .*, KV cache 8 GiB, activations"
    ) as raised:
        tilesim.load("llama-2-7b", device="trn1.32xlarge", tp=8, timing_only=True, max_context=131072)
    assert "by size alone at least 9 cores" in str(raised.value)


def test_a_run_this_machine_cannot_hold_is_refused_before_any_weight_is_read(tiny_model, monkeypatch):
    """The cores' memory is this machine's (device/memory.py): a functional run whose weights and
    activations pass 80% of it used to be killed by the kernel part way. The weights counted are
    the checkpoint's parameters in fp32 (untied, one core: nothing padded or copied); a
    timing-only run of the same model holds none of them and runs."""
    import torch
    from safetensors.torch import load_file

    from tilesim.device import memory
    from tilesim.errors import OutOfHostMemory, OutOfMemory

    folder = tiny_model("llama")
    tensors = load_file(str(folder / "model.safetensors"))
    params = sum(t.numel() for t in tensors.values()) * torch.float32.itemsize
    model = tilesim.load(folder, device="trn1", tp=1, max_context=32)
    need = sum(model.plan.weights) + sum(model.plan.activations)
    assert sum(model.plan.weights) == params
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: int(need / memory.HOST_SHARE) - 1)
    with pytest.raises(OutOfHostMemory, match=r"a timing-only run \(--timing-only\)") as raised:
        tilesim.load(folder, device="trn1", tp=1, max_context=32)
    assert isinstance(raised.value, OutOfMemory) and str(raised.value).startswith(f"computing {folder} on 1 emulated")
    assert "dtype='fp16' (or 'bf16') halves them" in str(raised.value)
    ipu = tilesim.Device("ipu-gc200", cores=1)  # weights in tile memory: this machine holds them all the same
    with pytest.raises(OutOfHostMemory, match=r"dtype='fp16' \(or 'bf16'\) halves them"):
        tilesim.load(folder, device=ipu, tp=1, max_context=32)
    tilesim.load(folder, device="trn1", tp=1, max_context=32, timing_only=True)
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: int(need / memory.HOST_SHARE) + 1)
    tilesim.load(folder, device="trn1", tp=1, max_context=32)


def test_the_kv_cache_counts_the_positions_a_run_writes(tiny_model, monkeypatch):
    """A core's memory commits a page when it is first written, and a sequence writes its cache
    position by position: a long context with short prompts holds little of it. So the KV cache
    is counted when a run says how many positions it writes, the share of the planned cache
    they are (generate, serve, speculative decoding), not at loading."""
    from tilesim.device import memory
    from tilesim.errors import OutOfHostMemory
    from tilesim.serving import Request, serve

    folder = tiny_model("llama")
    model = tilesim.load(folder, device="trn1", tp=1, max_context=256, batch=4)
    weights, kv, acts = (sum(getattr(model.plan, k)) for k in ("weights", "kv_cache", "activations"))
    half = weights + acts + kv // 2  # 128 of the 256 positions of every sequence
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: int(half / memory.HOST_SHARE) + 1)
    model = tilesim.load(folder, device="trn1", tp=1, max_context=256, batch=4)  # the whole cache would not fit
    assert len(model.generate([[1, 2]] * 4, max_new_tokens=126, eos_token_id=None).tokens[0]) == 126
    with pytest.raises(OutOfHostMemory, match=r"KV cache for 130 positions a sequence .*a shorter run or a smaller"):
        model.generate([[1, 2]] * 4, max_new_tokens=128)
    with pytest.raises(OutOfHostMemory, match=r"KV cache for the 4 longest requests \(516 positions\) "):
        serve(model, [Request(i, 0.0, 1, 128) for i in range(4)], max_num_seqs=4)
    assert serve(model, [Request(i, 0.0, 1, 127) for i in range(4)], max_num_seqs=4).summary()["requests"] == 4
    # a slot's pages are its own: one long request among short ones commits one slot's share of the cache
    # (it was counted as if every slot held it)
    mixed = [Request(0, 0.0, 1, 200), *(Request(i, 0.0, 1, 8) for i in range(1, 6))]
    assert serve(model, mixed, max_num_seqs=4).summary()["requests"] == 6


def test_a_speculative_run_counts_the_target_and_its_draft_together(tiny_model, monkeypatch):
    """Both models are in this machine's memory for the whole run: each fitting alone is not
    enough."""
    from tilesim.device import memory
    from tilesim.errors import OutOfHostMemory
    from tilesim.runtime.session import host_parts
    from tilesim.runtime.speculative import speculative_generate

    folder = tiny_model("llama")
    target = tilesim.load(folder, device="trn1", tp=1, max_context=64)
    draft = tilesim.load(folder, device="trn1", tp=1, max_context=64)
    positions = 3 + 8
    held = [sum(host_parts(m.plan, positions, 64).values()) for m in (target, draft)]
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: int(max(held) / memory.HOST_SHARE) + 1)
    with pytest.raises(OutOfHostMemory, match=r"KV cache for 11 positions a sequence .*, the draft \("):
        speculative_generate(target, draft, [1, 2, 3], max_new_tokens=8, eos_token_id=None)
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: int(sum(held) / memory.HOST_SHARE) + 1)
    assert len(speculative_generate(target, draft, [1, 2, 3], max_new_tokens=8, eos_token_id=None).tokens) == 8
