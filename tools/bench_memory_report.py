"""The tables and the summary of tools/bench_memory.py: (a) plan and host memory, (b) predicted vs measured
tensor bytes (and (b') CUDA peaks), (c) time split, then (d) peak RSS flatness, (e) prediction error, (f)
predicted host bytes vs RSS and (g) the baselines. Printed to stdout; `summarize` returns the JSON summary.
"""

from __future__ import annotations

import math

from tools.harness import MIB


def mib(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v / MIB:.{digits}f}"


def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.1f}%"


def print_tables(records: list[dict], cuda: bool) -> None:
    ok = [r for r in records if "plan" in r]
    for r in records:
        if "plan" not in r:
            print(f"{r['width']}x{r['height']} --ram {r['ram']}: {r.get('status')} (rc {r['job']['rc']}): "
                  f"{r.get('error', '')}")
    if not ok:
        return
    print("\n(a) plan and host memory (MiB). pred host = plan host_bytes (runtime const + store_io + device terms "
          "[+ spill_io]); non-rt = pred host - runtime;\n    RSS: wait4 = whole child life, main = VmHWM when "
          "main() returned, polled = last polled VmHWM; implied rt = main - non-rt")
    head = (f"{'width':>6} {'ram':>7} {'batch':>5} {'front':>6} {'pred host':>9} {'non-rt':>7} {'wait4':>7} "
            f"{'main':>7} {'polled':>7} {'main/pred':>9} {'implied rt':>10} {'disk pred':>9} {'spill meas':>10}")
    print(head)
    print("-" * len(head))
    for r in ok:
        p = r["plan"]
        ratio = r["main_hwm_mib"] * MIB / p["host_bytes"] if r.get("main_hwm_mib") else None
        spill = r["job"].get("spill_polled_peak_mib")
        print(f"{r['width']:>6} {r['ram']:>7} {p['batch'][0]:>2}x{p['batch'][1]:<2} {p['placement']:>6} "
              f"{mib(p['host_bytes']):>9} {mib(r['pred_non_runtime_host']):>7} {r['job']['wait4_mib']:7.1f} "
              f"{r['main_hwm_mib'] or float('nan'):7.1f} {r['job']['polled_hwm_mib']:7.1f} "
              f"{'-' if ratio is None else f'{ratio:.3f}':>9} {r.get('implied_runtime_mib', float('nan')):10.1f} "
              f"{mib(p['disk_bytes'], 2):>9} {'-' if not spill else f'{spill:.2f}':>10}")
    print("\n(b) predicted device terms vs tensor bytes of one streamed sweep (MiB); pred tensor = activations + "
          "frontier + staging + frontier_host;\n    err = pred/measured - 1 (positive = over-predicted); "
          "+untracked = measured + the disk frontier's staged K/V (np.fromfile views TensorBytes cannot see);\n"
          "    front meas = Frontier.peak_bytes (wherever it lives), staged = Frontier.peak_staged_bytes")
    head = (f"{'width':>6} {'ram':>7} {'batch':>5} {'front':>6} {'weights':>7} {'activ':>7} {'frontier':>8} "
            f"{'staging':>7} {'f_host':>6} {'pred tensor':>11} {'measured':>8} {'err':>7} {'+untracked':>10} "
            f"{'err':>7} {'front pred':>10} "
            f"{'front meas':>10} {'err':>7} {'staged':>7} {'front blk':>9}")
    print(head)
    print("-" * len(head))
    for r in ok:
        p, parts, sw = r["plan"], r["plan"]["parts"], r.get("sweep") or {}
        fpred = parts["frontier"] + parts["frontier_host"] + p["disk_bytes"]
        fblk = f"{sw['frontier_peak_blocks']:.0f}/{sw['frontier_bound_blocks']}" if sw else "-"
        print(f"{r['width']:>6} {r['ram']:>7} {p['batch'][0]:>2}x{p['batch'][1]:<2} {p['placement']:>6} "
              f"{mib(parts['weights'], 2):>7} {mib(parts['activations']):>7} {mib(parts['frontier'], 2):>8} "
              f"{mib(parts['staging'], 2):>7} {mib(parts['frontier_host'], 1):>6} {mib(r['pred_tensor'], 2):>11} "
              f"{mib(sw.get('tensor_peak'), 2):>8} {pct(r.get('tensor_err')):>7} "
              f"{mib(r.get('tensor_measured_adj'), 2):>10} {pct(r.get('tensor_err_adj')):>7} {mib(fpred, 2):>10} "
              f"{mib(sw.get('frontier_peak'), 2):>10} {pct(r.get('frontier_err')):>7} "
              f"{mib(sw.get('staged_peak'), 2):>7} {fblk:>9}")
    if cuda:
        print("\n(b') CUDA: torch.cuda.max_memory_allocated (MiB); job = whole upscale vs plan device_bytes; "
              "sweep = one sweep above its start vs activations + frontier + staging")
        head = f"{'width':>6} {'vram':>7} {'pred dev':>8} {'job max':>8} {'err':>7} {'sweep pred':>10} {'sweep':>8} {'err':>7}"
        print(head)
        print("-" * len(head))
        for r in ok:
            parts, sw = r["plan"]["parts"], r.get("sweep") or {}
            dev = parts["activations"] + parts["frontier"] + parts["staging"]
            print(f"{r['width']:>6} {r['vram'] or '-':>7} {mib(r['plan']['device_bytes']):>8} "
                  f"{mib(r.get('cuda_max_allocated')):>8} {pct(r.get('cuda_job_err')):>7} {mib(dev):>10} "
                  f"{mib(sw.get('cuda_peak')):>8} {pct(r.get('cuda_sweep_err')):>7}")
    print("\n(c) time: ms/block = seconds.model / model_blocks_done; split of the task loop (seconds.total); "
          "setup = wall - total (start, imports, job creation, model load, exit)")
    head = (f"{'width':>6} {'ram':>7} {'blocks':>6} {'batch':>5} {'front':>6} {'wall s':>7} {'setup s':>7} "
            f"{'loop s':>7} {'ms/block':>8} {'model':>13} {'read':>13} {'write':>13} {'other':>13} {'sweep s':>7}")
    print(head)
    print("-" * len(head))
    for r in ok:
        p, tot = r["plan"], r["total_s"] or float("nan")
        cell = lambda k: f"{r[k]:6.2f} {100 * r[k] / tot:5.1f}%"  # noqa: E731
        sw = r.get("sweep") or {}
        print(f"{r['width']:>6} {r['ram']:>7} {r['model_blocks_done']:>6} {p['batch'][0]:>2}x{p['batch'][1]:<2} "
              f"{p['placement']:>6} {r['job']['wall_s']:7.1f} {r['setup_s']:7.1f} {r['total_s']:7.2f} "
              f"{r['ms_per_block']:8.2f} {cell('model_s')} {cell('read_s')} {cell('write_s')} {cell('other_s')} "
              f"{sw.get('seconds_traced', float('nan')):7.1f}")


def summarize(records: list[dict], base: dict | None, args) -> dict:
    ok = [r for r in records if "plan" in r]
    summary: dict = {"flatness": {}, "tensor_error": None, "host_vs_rss": None}
    print("\n(d) peak RSS flatness across widths at the same budget (target max/min <= "
          f"{args.flat_target:.2f}):")
    for ram in args.ram:
        for vram in (args.vram or [None]):
            group = [r for r in ok if r["ram"] == ram and r["vram"] == vram and r.get("main_hwm_mib")]
            if len(group) < 2:
                continue
            entry = {}
            for key, label in (("main_hwm_mib", "main HWM"), ("wait4", "wait4")):
                vals = [(r["width"], r["main_hwm_mib"] if key == "main_hwm_mib" else r["job"]["wait4_mib"])
                        for r in group]
                hi, lo = max(vals, key=lambda v: v[1]), min(vals, key=lambda v: v[1])
                ratio = hi[1] / lo[1]
                entry[key] = {"ratio": ratio, "max": hi, "min": lo, "within": ratio <= args.flat_target}
                print(f"    --ram {ram}{f' --vram {vram}' if vram else ''} {label:>8}: {hi[1]:.1f} MiB (w {hi[0]}) / "
                      f"{lo[1]:.1f} MiB (w {lo[0]}) = {ratio:.3f}x  "
                      f"{'within' if ratio <= args.flat_target else 'NOT within'} {args.flat_target:.2f}")
            summary["flatness"][f"{ram}|{vram}"] = entry
    summary["tensor_error"] = {}
    for key, label in (("tensor_err", "TensorBytes"), ("tensor_err_adj", "TensorBytes + untracked disk staging")):
        errs = [(r["width"], r["ram"], r[key]) for r in ok if r.get(key) is not None]
        if not errs:
            continue
        worst = max(errs, key=lambda e: abs(e[2]))
        within = sum(abs(e[2]) <= args.pred_target for e in errs)
        print(f"{'' if summary['tensor_error'] else chr(10)}(e) tensor-bytes prediction error (pred/measured - 1) vs "
              f"{label}, target |err| <= {100 * args.pred_target:.0f}%: {within}/{len(errs)} within; range "
              f"{pct(min(e[2] for e in errs))} .. {pct(max(e[2] for e in errs))}; worst {pct(worst[2])} (width "
              f"{worst[0]}, --ram {worst[1]}); under-predictions (measured > predicted): {sum(e[2] < 0 for e in errs)}")
        summary["tensor_error"][key] = {"min": min(e[2] for e in errs), "max": max(e[2] for e in errs),
                                        "within": within, "n": len(errs), "under": sum(e[2] < 0 for e in errs),
                                        "target": args.pred_target}
    host = [r for r in ok if r.get("main_hwm_mib")]
    if host:
        ratios = [r["main_hwm_mib"] * MIB / r["plan"]["host_bytes"] for r in host]
        wratios = [r["job"]["wait4_mib"] * MIB / r["plan"]["host_bytes"] for r in host]
        over = [r for r in host if r["job"]["wait4_mib"] * MIB > r["plan"]["host_bytes"]]
        implied = [r["implied_runtime_mib"] for r in host]
        print(f"(f) predicted host bytes vs measured RSS: main HWM / pred = {min(ratios):.3f} .. {max(ratios):.3f}; "
              f"wait4 / pred = {min(wratios):.3f} .. {max(wratios):.3f}; runs whose wait4 peak exceeded the "
              f"predicted host bytes: {len(over)}/{len(host)}")
        print(f"    implied runtime (main HWM - predicted non-runtime host terms): {min(implied):.1f} .. "
              f"{max(implied):.1f} MiB vs RUNTIME_HOST_BYTES = {rt_const() / MIB:.0f} MiB")
        summary["host_vs_rss"] = {"main_over_pred": [min(ratios), max(ratios)],
                                  "wait4_over_pred": [min(wratios), max(wratios)], "wait4_over_budget_runs": len(over),
                                  "implied_runtime_mib": [min(implied), max(implied)]}
    if base:
        imp, mini = base["imports_only"], base["min_upscale"]
        print(f"(g) baselines: imports only: VmHWM {imp.get('main_hwm_mib') or float('nan'):.1f} MiB (wait4 "
              f"{imp['wait4_mib']:.1f}); smallest upscale (one-block LR, --batch 1x1 --frontier device): main HWM {mini.get('main_hwm_mib') or float('nan'):.1f} MiB "
              f"(anon {mini.get('rss_anon_mib') or float('nan'):.1f}, file {mini.get('rss_file_mib') or float('nan'):.1f}), "
              f"wait4 {mini['wait4_mib']:.1f} MiB, wall {mini['wall_s']:.1f} s; its predicted non-runtime terms "
              f"{mini.get('pred_non_runtime_host_mib', float('nan')):.2f} MiB")
        if mini.get("main_hwm_mib"):
            rt = mini["main_hwm_mib"] - mini.get("pred_non_runtime_host_mib", 0.0)
            print(f"    -> measured runtime floor ~ {rt:.0f} MiB (main HWM) / {mini['wait4_mib'] - mini.get('pred_non_runtime_host_mib', 0.0):.0f} "
                  f"MiB (with teardown) vs RUNTIME_HOST_BYTES = {rt_const() / MIB:.0f} MiB")
            summary["runtime_floor_mib"] = {"main": rt, "wait4": mini["wait4_mib"] - mini.get("pred_non_runtime_host_mib", 0.0)}
    return summary


def rt_const() -> int:
    from streamsr.stream.memory import RUNTIME_HOST_BYTES

    return RUNTIME_HOST_BYTES
