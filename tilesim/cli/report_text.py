"""The report as text for the terminal."""

from __future__ import annotations

from tilesim.cli.table import print_table
from tilesim.profiler.events import Trace
from tilesim.units import fmt_bytes, fmt_flops, fmt_time


def print_report(report: dict, trace: Trace, full: bool = False) -> None:
    model, device = trace.model, trace.device
    pipe = report.get("pipeline")
    where = f"{model['tp']} core(s)" if not pipe else f"{pipe['pp']} stages x {model['tp']} core(s)"
    title = f"{model['name']} ({model['arch']}, {model['dtype']})"
    print(f"\n# {title} on {where} of {device['name']}, batch {model['batch']}")
    tpot = report["tpot_s"]
    print(f"simulated time to first token  {fmt_time(report['ttft_s'])}")
    if tpot["mean"] is None:
        print("simulated time per token       n/a (one new token: it comes from the prefill, no decode step ran)")
    else:
        print(
            f"simulated time per token       {fmt_time(tpot['mean'])} mean, {fmt_time(tpot['p50'])} p50, "
            f"{fmt_time(tpot['p99'])} p99 (decode steps)"
        )
    decode_rate = report.get("sim_decode_tokens_per_s")
    decode = f", {decode_rate:.1f} in decode alone" if decode_rate else ""
    print(
        f"simulated tokens per second    {report['sim_tokens_per_s']:.1f} over the whole run, prefill included"
        f"{decode} (batch of {model['batch']})"
    )
    experts = report.get("experts")
    if experts:
        line = (
            f"mixture of experts             {experts['experts']} experts, {experts['per_token']} per token, "
            f"split {'by width' if experts['sharding'] == 'tp' else 'whole over the cores'}; timing assumes "
            f"{experts['timing_assumes']} (uniform: {experts['uniform_tokens_per_expert']:.1f} tokens per expert "
            "and layer)"
        )
        if "tokens_per_expert" in experts:
            total = [sum(col) for col in zip(*experts["tokens_per_expert"], strict=True)]
            line += f"; routed: {total} over all layers (busiest {experts['imbalance']:.2f}x the mean)"
        print(line)
    if pipe:
        line = (
            f"pipeline                       {pipe['pp']} stages of {','.join(map(str, pipe['layers_per_stage']))} "
            f"layers, {pipe['micro_batches']} micro-batch(es)"
        )
        if pipe.get("micro_batches_run", pipe["micro_batches"]) < pipe["micro_batches"]:
            line += f" asked, {pipe['micro_batches_run']} run (at most one a sequence)"
        if "bubble_fraction" in pipe:
            busy = ", ".join(fmt_time(b) for b in pipe["stage_busy_s"])
            line += f"; last step: stages busy {busy}, bubble {pipe['bubble_fraction']:.0%}"
        print(line)
    buckets = report.get("buckets")
    if buckets:
        used = ", ".join(f"{k} x{n}" for k, n in buckets["steps"].items())
        print(
            f"compiled buckets               prefill {_sizes(buckets['prefill'])}, decode {_sizes(buckets['decode'])};"
            f" steps ran in {used}"
        )
    memory = report.get("memory")
    if memory:
        rows = []
        reserved = memory["reserved"]
        for core, entry in enumerate(memory["per_core"]):
            row = {
                "core": str(core),
                "weights": fmt_bytes(entry.get("weights", 0)),
                "KV cache": fmt_bytes(entry.get("kv_cache", 0)),
                **({"state": fmt_bytes(entry["recurrent_state"])} if "recurrent_state" in entry else {}),
                "activations": fmt_bytes(entry.get("activations", 0)),
                **({"runtime": fmt_bytes(sum(entry.get(k, 0) for k in reserved))} if reserved else {}),
                "peak": fmt_bytes(entry["peak"]),
                "free": ", ".join(f"{fmt_bytes(v)} {k}" for k, v in entry["free"].items() if memory["capacity"][k]),
            }
            _add_core_row(rows, row, core)
        print("\nmemory per core")
        print_table(rows, right=("weights", "KV cache", "state", "activations", "runtime", "peak"))
        if memory["reserved"]:
            parts = ", ".join(f"{k.replace('_', ' ')} {fmt_bytes(v)}" for k, v in memory["reserved"].items())
            print(f"runtime memory per core (the device runtime's own, as its tools report it): {parts}")
        rule = memory["sizing_rule"]
        if rule["capacity_bytes"]:
            verdict = "fits" if rule["weights_and_kv_bytes"] < rule["capacity_bytes"] else "does not fit"
            print(
                f"sizing rule (weights + KV cache < off-chip memory x cores): {fmt_bytes(rule['weights_and_kv_bytes'])}"
                f" of {fmt_bytes(rule['capacity_bytes'])}: {verdict}; the per-core table above is the stricter answer"
            )
        print(
            f"fullest tile: {fmt_bytes(memory['max_tile_bytes'])} of {fmt_bytes(memory['tile_bytes'])} "
            f"(mean {fmt_bytes(memory['mean_tile_bytes'])}); weights in {memory['regions']['weights']}, "
            f"KV cache in {memory['regions']['kv_cache']}, activations in {memory['regions']['activations']}"
        )
        for note in memory["notes"]:
            print(f"note: {note}")
        if report.get("staged_rows") is not None:
            print(
                f"timing: steps of up to {report['staged_rows']} token rows read their activations from tile memory"
                " (their hidden states fit there; a prefill's rows are its whole batch's), longer steps from"
                " off-chip memory"
            )
    precision = report.get("precision")
    if precision:
        acts = precision["activations"]
        if acts == "int8":
            acts = "int8 (block products' inputs, in blocks of 32; fp32 elsewhere)"
        distinct = precision.get("distinct_weight_bytes")
        copies = f" ({fmt_bytes(distinct)} distinct; replicated weights counted on each core)" if distinct else ""
        print(
            f"\nprecision: activations {acts}, KV cache {precision['kv_cache']}; weights "
            f"{fmt_bytes(precision['weight_bytes'])} held over all cores{copies}, "
            f"{fmt_bytes(precision['bytes_saved'])} less than fp32"
        )
        if full:
            print_table(
                [
                    {
                        "weights": name,
                        "format": ", ".join(e["formats"]),
                        "bytes": fmt_bytes(e["bytes"]),
                        "fp32 bytes": fmt_bytes(e["fp32_bytes"]),
                    }
                    for name, e in precision["weights"].items()
                ],
                right=("bytes", "fp32 bytes"),
            )
    wall = trace.wall
    if model.get("timing_only"):
        print(f"emulator (timing only): load {wall.get('load_s', 0):.2f} s, whole run {wall.get('total_s', 0):.2f} s")
    elif "decode_tokens_per_s" in wall:
        rate = wall["decode_tokens_per_s"]
        decode = f"decode {rate:.1f} tokens/s" if rate else "decode n/a (no decode step)"
        print(
            f"emulator: load {wall.get('load_s', 0):.2f} s, compile {wall.get('compile_s', 0):.2f} s, "
            f"{decode} (wall clock)"
        )
    if not full:
        return
    for key, title in (("prefill_breakdown_s", "prefill"), ("decode_breakdown_s", "one decode step")):
        parts = report.get(key)
        if parts:
            total = sum(parts.values())
            print(f"\ncritical path of {title} by op type ({fmt_time(total)})")
            print_table(
                [
                    {"op type": k, "time": fmt_time(v), "share": f"{v / total:.1%}"}
                    for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
                ],
                right=("time", "share"),
            )
    cores = report.get("decode_cores")
    if cores:
        print("\none decode step per core")
        rows = []
        for core, c in enumerate(cores):
            row = {
                "core": str(core),
                "compute": fmt_time(c["compute"]),
                "communication": fmt_time(c["communication"]),
                "waiting": fmt_time(c["waiting"]),
            }
            _add_core_row(rows, row, core)
        print_table(rows, right=("compute", "communication", "waiting"))
    util = report["utilisation"]
    dtype = util.get("mfu_peak", {}).get("dtype") or model.get("dtype")
    print(
        f"\nutilisation: MFU {util['mfu']:.2%} of the {dtype} peak, {fmt_flops(device['peak_flops'])} per core; "
        f"MBU {util['mbu']:.2%} of the weights' memory bandwidth"
    )
    shown = util.get("kernels_shown", "cumulative")
    print(f"kernels, whole run ({shown}); bound: the larger of its compute and memory time")
    print_table(
        [
            {"kernel": name, "time per core": fmt_time(k["time_s"]), "bound": k["bound"]}
            for name, k in util["kernels"].items()
        ],
        right=("time per core",),
    )
    for phase, table in util.get("kernels_by_phase", {}).items():
        top = sorted(table.items(), key=lambda kv: -kv[1]["time_s"])[:4]
        shown = ", ".join(f"{name} {fmt_time(k['time_s'])} ({k['bound']})" for name, k in top)
        print(f"  {phase}, the longest: {shown}")


def _sizes(sizes: list[int]) -> str:
    return ",".join(map(str, sizes)) if len(sizes) <= 4 else f"{sizes[0]}..{sizes[-1]} ({len(sizes)})"


def _add_core_row(rows: list[dict], row: dict, core: int) -> None:
    """Append `row` of `core`, or widen the last row's core range when it reads the same ("0-31")."""
    if rows and all(rows[-1][k] == row[k] for k in row if k != "core"):
        rows[-1]["core"] = f"{rows[-1]['core'].split('-')[0]}-{core}"
    else:
        rows.append(row)
