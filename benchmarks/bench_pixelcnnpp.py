"""Throughput, memory and FLOP-efficiency benchmark of the PixelCNN++ plugin on CPU.

    python benchmarks/bench_pixelcnnpp.py                       # the four issue configs, batch 16, 2 threads
    python benchmarks/bench_pixelcnnpp.py --configs 2/64/10@32x3 --repeats 5
    python benchmarks/bench_pixelcnnpp.py --compile             # torch.compile of the network (minutes of compile time)
    python benchmarks/bench_pixelcnnpp.py --compile loss        # torch.compile of the mixture likelihood only
    python benchmarks/bench_pixelcnnpp.py --unfused             # plain pad/cat/elu ops, NCHW (for comparison)
    python benchmarks/bench_pixelcnnpp.py --port ~/pixel-cnn-pp # also time a checkout of the most-used port, same run

A config is ``nr_resnet/nr_filters/nr_logistic_mix@SIZExCHANNELS``. Every (config, mode) runs in a fresh
subprocess so that its peak memory (max RSS, ``resource.getrusage``) is its own. Per mode:

* eval:  ``model.score`` (no grad, eval mode) on a batch of random uint8 images;
* train: one ``PixelCNNppTrainer.train_step`` = forward + backward + the reference's Adam step + EMA,
  exactly what ``fit`` runs per step (dropout 0.5 on).

FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls,
forward for eval, forward + backward for train), and "% matmul" is the achieved FLOP rate over the
fp32 ``torch.matmul`` rate measured here on the same threads. "busy" is the CPU time other processes
took during the timed part (from /proc/stat), as a check on whether the numbers are clean: this is a
shared machine. No assertions: this prints a table.

``--port DIR`` also times, in the same run and the same way, a checkout of the most-used PyTorch port
(``git clone https://github.com/pclucas14/pixel-cnn-pp DIR``; none of its code is in this repository):
eval = its ``PixelCNN`` forward + ``discretized_mix_logistic_loss`` (``_1d`` for one channel) under
``no_grad`` in eval mode, train = forward + loss + backward + ``Adam.step`` (lr 2e-4, its default), on
inputs rescaled to [-1, 1] as its ``main.py`` does. Its loss calls ``.cuda()`` unconditionally, so the
worker makes ``Tensor.cuda`` return the tensor itself (CPU only). Some of its commits have a Python-2
``print e`` in ``utils.load_part_of_model``; fix that line to ``print(e)`` if the import fails. The
table then gives each ratio against the port *as measured in this run* ("x port").
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_CONFIGS = ["5/160/10@32x3", "2/64/10@32x3", "1/32/5@32x3", "2/64/5@28x1"]
#: Figures quoted in the issue for the most-used PyTorch port on this machine (2 cores, batch 16).
REFERENCE = {
    "5/160/10@32x3": {"eval": 3.6, "train": 1.2, "train_mem_gb": 8.8},
    "2/64/10@32x3": {"eval": 36.0, "train": 11.8},
    "1/32/5@32x3": {"eval": 137.0, "train": 47.0},
    "2/64/5@28x1": {"eval": 39.0, "train": 16.0},
}


def parse_config(spec: str) -> dict:
    arch, _, shape = spec.partition("@")
    r, f, k = (int(v) for v in arch.split("/"))
    size, _, ch = (shape or "32x3").partition("x")
    return dict(nr_resnet=r, nr_filters=f, nr_logistic_mix=k, size=int(size), channels=int(ch or 3))


def _cpu_busy_seconds() -> float:
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(max_wait: float, threshold: float = 0.9, window: float = 10.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine's CPUs are >= ``threshold`` idle over ``window`` s.

    Returns the idle fraction last seen. On a shared machine this keeps other jobs out of the figures.
    """
    deadline = time.monotonic() + max_wait
    ncpu = os.cpu_count() or 1
    while True:
        b0, t0 = _cpu_busy_seconds(), time.monotonic()
        time.sleep(window)
        idle = 1.0 - (_cpu_busy_seconds() - b0) / ((time.monotonic() - t0) * ncpu)
        if idle >= threshold or time.monotonic() >= deadline:
            return idle


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def matmul_gflops(threads: int, n: int = 4096, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- worker (one subprocess per row)


def _port_model(cfg: dict, c: dict):
    """The port's model and a ``(x8) -> loss`` function, imported from the checkout at ``cfg['port']``."""
    import torch

    torch.Tensor.cuda = lambda self, *a, **k: self  # the port's loss calls .cuda() unconditionally
    sys.path.insert(0, os.path.abspath(os.path.expanduser(cfg["port"])))
    import model as port_model  # noqa: E402  (the checkout's model.py)
    import utils as port_utils  # noqa: E402

    net = port_model.PixelCNN(nr_resnet=c["nr_resnet"], nr_filters=c["nr_filters"],
                              nr_logistic_mix=c["nr_logistic_mix"], input_channels=c["channels"])
    loss_op = (port_utils.discretized_mix_logistic_loss_1d if c["channels"] == 1
               else port_utils.discretized_mix_logistic_loss)

    def loss(x8):
        x = (x8.float() / 255.0 - 0.5) * 2.0  # its main.py: ToTensor then (x - .5) * 2
        return loss_op(x, net(x))

    return net, loss


def _measure(cfg: dict, step, flop_pass, flop_batch: int, params: int, base_rss: float) -> dict:
    """One row: ``step`` timed ``cfg['repeats']`` times after a warm-up call, the CPU time other processes
    took meanwhile, the peak RSS, and the FLOPs of ``flop_pass()`` (one pass over ``flop_batch`` images)."""
    from torch.utils.flop_counter import FlopCounterMode

    t0 = time.perf_counter()
    step()  # warm-up (and compilation)
    first = time.perf_counter() - t0
    busy0, cpu0, w0 = _cpu_busy_seconds(), time.process_time(), time.perf_counter()
    times = [_timed(step) for _ in range(cfg["repeats"])]
    wall = time.perf_counter() - w0
    foreign = max(0.0, (_cpu_busy_seconds() - busy0) - (time.process_time() - cpu0)) / (wall * os.cpu_count())
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with FlopCounterMode(display=False) as fc:
        flop_pass()
    return {
        "config": cfg["config"], "mode": cfg["mode"], "batch": cfg["batch"], "impl": cfg.get("impl", "benchbench"),
        "img_s_best": cfg["batch"] / min(times), "img_s_median": cfg["batch"] / statistics.median(times),
        "first_call_s": first, "flops_per_img": fc.get_total_flops() / flop_batch, "params": params,
        "peak_rss_mb": peak_rss, "base_rss_mb": base_rss, "foreign_busy": foreign,
    }


def worker(cfg: dict) -> dict:
    import torch

    if cfg.get("impl") == "port":
        return _port_worker(cfg)

    from benchbench_plugins.pixelcnnpp import PixelCNNpp, PixelCNNppTrainer

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    c = parse_config(cfg["config"])
    model = PixelCNNpp(in_channels=c["channels"], nr_resnet=c["nr_resnet"], nr_filters=c["nr_filters"],
                       nr_logistic_mix=c["nr_logistic_mix"], compile=cfg["compile"])
    if cfg["unfused"]:
        model.net.set_fused(False)
        model.net.channels_last = False
    shape = (cfg["batch"], c["channels"], c["size"], c["size"])
    x8 = torch.randint(0, 256, shape, dtype=torch.uint8)
    base_rss = _rss_mb()
    if cfg["mode"] == "eval":
        model.eval()

        def step():
            return model.score(x8)["log_prob"]
    else:
        model.train()
        trainer = PixelCNNppTrainer(model)
        xf = x8.float()

        def step():
            return trainer.train_step(xf)

    def flop_pass():  # on a batch of 2 (FLOPs scale linearly with the batch)
        xs = x8[:2].float()
        if cfg["mode"] == "eval":
            with torch.no_grad():
                model.log_prob(xs)
        else:
            (-model.log_prob(xs).sum()).backward()

    row = _measure(cfg, step, flop_pass, 2, sum(p.numel() for p in model.parameters()), base_rss)
    row["compile"] = cfg["compile"]
    row["compiled"] = bool(cfg["compile"] and not (model._compile_failed or model._loss_compile_failed))
    return row


def _port_worker(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    c = parse_config(cfg["config"])
    net, loss = _port_model(cfg, c)
    x8 = torch.randint(0, 256, (cfg["batch"], c["channels"], c["size"], c["size"]), dtype=torch.uint8)
    base_rss = _rss_mb()
    if cfg["mode"] == "eval":
        net.eval()

        def step():
            with torch.no_grad():
                return loss(x8)
    else:
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=2e-4)

        def step():
            out = loss(x8)
            opt.zero_grad()
            out.backward()
            opt.step()
            return out

    def flop_pass():  # on the same batch: the port caches its padding from the first batch, so no smaller one
        if cfg["mode"] == "eval":
            with torch.no_grad():
                loss(x8)
        else:
            loss(x8).backward()

    return _measure(cfg, step, flop_pass, cfg["batch"], sum(p.numel() for p in net.parameters()), base_rss)


# --------------------------------------------------------------------------- driver


def run_one(cfg: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": cfg["config"], "mode": cfg["mode"], "impl": cfg.get("impl"), "error": f"timeout after {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"config": cfg["config"], "mode": cfg["mode"], "impl": cfg.get("impl"), "error": proc.stderr.strip()[-400:]}
    return json.loads(lines[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help="comma-separated R/F/K@SIZExC (default: the issue's four)")
    ap.add_argument("--modes", default="eval,train")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations after one warm-up (default 3)")
    ap.add_argument("--train-repeats", type=int, default=None, help="override --repeats for training")
    ap.add_argument("--compile", nargs="?", const="net", default=False, choices=["net", "loss", "all"],
                    help="PixelCNNpp(compile=ROUTE): 'net' (the default when given bare: the network, plain-op "
                         "path), 'loss' (the mixture likelihood only) or 'all'; eager fallback on failure")
    ap.add_argument("--unfused", action="store_true", help="plain pad/cat/elu ops in NCHW, for comparison")
    ap.add_argument("--port", default=None, metavar="DIR",
                    help="also time a checkout of pclucas14/pixel-cnn-pp at DIR, in the same run")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per (config, mode) subprocess")
    ap.add_argument("--json", default=None, help="also write the raw rows to this file")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each measurement wait up to S seconds for the CPUs to be >= 90%% idle")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.wait_idle:
        wait_for_idle(args.wait_idle)
    mm = matmul_gflops(args.threads)
    print(f"fp32 torch.matmul (4096^2, {args.threads} threads): {mm:.0f} GFLOP/s", flush=True)
    rows = []
    for spec in args.configs.split(","):
        for mode in args.modes.split(","):
            reps = args.train_repeats if (mode == "train" and args.train_repeats) else args.repeats
            for impl in ("benchbench", "port") if args.port else ("benchbench",):
                cfg = dict(config=spec.strip(), mode=mode, batch=args.batch, threads=args.threads, repeats=reps,
                           compile=args.compile, unfused=args.unfused, impl=impl, port=args.port)
                if args.wait_idle:
                    wait_for_idle(args.wait_idle)
                r = run_one(cfg, args.timeout)
                r.setdefault("impl", impl)
                rows.append(r)
                if "error" in r:
                    print(f"  {spec} {mode} [{impl}]: FAILED {r['error']}", flush=True)
                else:
                    print(f"  {spec} {mode} [{impl}]: {r['img_s_best']:.2f} img/s (median {r['img_s_median']:.2f}), "
                          f"first call {r['first_call_s']:.1f} s, peak RSS {r['peak_rss_mb'] / 1024:.2f} GB, "
                          f"busy {100 * r['foreign_busy']:.0f}%", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"matmul_gflops": mm, "args": vars(args), "rows": rows}, fh, indent=1)
    print()
    print(table(rows, mm))


def table(rows: list[dict], mm: float) -> str:
    """Markdown table: one line per (config, implementation); "x ref" against the issue's quoted figures,
    "x port" against the port as measured in the same run (when ``--port`` was given)."""
    by = {(r["config"], r["mode"], r.get("impl", "benchbench")): r for r in rows}
    has_port = any(r.get("impl") == "port" for r in rows)
    ratio = "x port" if has_port else "x ref"
    head = (f"| config | impl | params | GFLOP/img eval / train | eval img/s ({ratio}) | train img/s ({ratio}) "
            "| % matmul eval / train | peak RSS eval / train (GB) | busy |")
    out = [head, "|" + "---|" * 9]
    ok = lambda r: bool(r) and "error" not in r  # noqa: E731
    for spec in dict.fromkeys(r["config"] for r in rows):
        for impl in ("benchbench", "port") if has_port else ("benchbench",):
            ev, tr = by.get((spec, "eval", impl), {}), by.get((spec, "train", impl), {})
            if impl == "port":
                base = {}
            elif has_port:
                base = {m: by[(spec, m, "port")]["img_s_best"] for m in ("eval", "train")
                        if ok(by.get((spec, m, "port")))}
            else:
                base = REFERENCE.get(spec, {})

            def rate(r, key):
                if not ok(r):
                    return "failed" if r else "n/a"
                v = r["img_s_best"]
                return f"{v:.2f}" + (f" ({v / base[key]:.2f}x)" if key in base else "")

            pct = lambda r: f"{100 * r['img_s_best'] * r['flops_per_img'] / 1e9 / mm:.0f}%" if ok(r) else "-"  # noqa: E731
            gb = lambda r: f"{r['peak_rss_mb'] / 1024:.2f}" if ok(r) else "-"  # noqa: E731
            anyr = ev if ok(ev) else tr
            params = f"{anyr['params'] / 1e6:.2f}M" if ok(anyr) else "-"
            fl = "/".join(f"{r['flops_per_img'] / 1e9:.2f}" if ok(r) else "-" for r in (ev, tr))
            busy = max((r.get("foreign_busy", 0) for r in (ev, tr) if ok(r)), default=0)
            out.append(f"| {spec} | {impl} | {params} | {fl} | {rate(ev, 'eval')} | {rate(tr, 'train')} "
                       f"| {pct(ev)} / {pct(tr)} | {gb(ev)} / {gb(tr)} | {100 * busy:.0f}% |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
