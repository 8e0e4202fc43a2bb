"""CPU seconds of every process a command runs, by running it in a cgroup of its own.

    python benchmarks/cpu_meter.py -- COMMAND ARGS...     # prints one JSON line: cpu, wall, by_role

getrusage cannot see all of a Ray job: Ray's raylet ignores SIGCHLD, so its workers are reaped without
their CPU time reaching any parent. A cgroup's CPU counter holds every process in it, whoever reaps
them. Needs root and a writable cgroup mount (v2, or v1's cpuacct). Used by benchmarks/bench_shard.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


PREFIX = "bench-shard-"


class CpuCgroup:
    """A fresh cgroup that this process (and so everything it starts) runs in: its CPU counter holds every
    process of a command's tree, daemons and processes reaped by others (Ray's raylet ignores SIGCHLD, so
    its workers' time never reaches any getrusage) included. Needs root and a writable cgroup mount."""

    def __init__(self) -> None:
        for root, counter, scale in (("/sys/fs/cgroup", "cpu.stat", 1e-6), ("/sys/fs/cgroup/unified", "cpu.stat", 1e-6),
                                     ("/sys/fs/cgroup/cpuacct", "cpuacct.usage", 1e-9)):
            if os.path.exists(os.path.join(root, "cgroup.procs")) and os.access(root, os.W_OK):
                self.parent, self.counter, self.scale = root, counter, scale
                break
        else:
            raise SystemExit("the whole-command comparison needs a writable cgroup mount (run as root)")
        # unique even where a killed benchmark left the cgroup of an earlier process with this pid
        self.path = os.path.join(self.parent, f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}")

    def __enter__(self) -> CpuCgroup:
        self._remove_stale()
        os.mkdir(self.path)
        Path(self.path, "cgroup.procs").write_text(str(os.getpid()))
        return self

    def _remove_stale(self) -> None:
        """Remove the empty cgroups of benchmarks that were killed before they could (their pid is gone)."""
        for name in os.listdir(self.parent):
            if not name.startswith(PREFIX):
                continue
            pid = name[len(PREFIX):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                try:
                    os.rmdir(os.path.join(self.parent, name))  # refused while a process is in it
                except OSError:
                    pass

    def seconds(self) -> float:
        text = Path(self.path, self.counter).read_text()
        return float(text.split()[1] if self.counter == "cpu.stat" else text) * self.scale  # usage_usec / ns

    def others(self) -> list[int]:
        return [int(pid) for pid in Path(self.path, "cgroup.procs").read_text().split() if int(pid) != os.getpid()]

    def __exit__(self, *exc) -> None:
        """Leave the cgroup and remove it, once what the command started has exited (killed, by pid, after
        a minute: only processes this benchmark started can be in it)."""
        Path(self.parent, "cgroup.procs").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while self.others() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.others():
            os.kill(pid, signal.SIGKILL)
        while True:
            try:
                os.rmdir(self.path)
                return
            except OSError:  # busy until the killed processes are gone
                if time.monotonic() > deadline + 10:
                    raise
                time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cpu_model() -> str:
    """The CPU the figures were measured on, as /proc/cpuinfo names it, and the CPUs this process sees:
    per-core ratios differ by CPU (docs/benchmarks.md names each figure's)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        name = "unknown"
    cpus = sorted(os.sched_getaffinity(0))
    siblings = _core_siblings(cpus)
    shared = f" ({len(cpus)} hardware threads of {len(siblings)} core{'s' if len(siblings) > 1 else ''})" \
        if len(siblings) < len(cpus) else ""
    return f"{name}, {len(cpus)} CPUs{shared}"


def smt_shared() -> bool:
    """Whether some of this process's CPUs are hardware threads of one core (SMT, "hyperthreads"): two
    processes on such a pair each get ~60% of a core, so per CPU-second a parallel job looks dearer than
    a one-process one even when it does the same work per core."""
    cpus = sorted(os.sched_getaffinity(0))
    return len(_core_siblings(cpus)) < len(cpus)


def _core_siblings(cpus: list[int]) -> set[str]:
    """One entry per physical core among `cpus` (its thread_siblings_list), or one per CPU if unknown."""
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return cores


def meter(command: list[str]) -> None:
    """Run `command` in its own cgroup; print one JSON line: CPU seconds of all its processes, wall time,
    and a sampled per-process breakdown (approximate: each process's last sample before it exits)."""
    import psutil

    seen: dict[int, tuple[str, float]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in group.others():
                try:
                    proc = psutil.Process(pid)
                    with proc.oneshot():
                        times = proc.cpu_times()
                        seen[pid] = (_role(proc), times.user + times.system)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    with CpuCgroup() as group, tempfile.TemporaryFile() as log:
        sampler = threading.Thread(target=sample, daemon=True)
        start, cpu, own = time.perf_counter(), group.seconds(), time.process_time()
        sampler.start()
        code = subprocess.run(command, stdout=log, stderr=log).returncode
        deadline = time.monotonic() + 60
        while group.others() and time.monotonic() < deadline:  # what the command left exiting
            time.sleep(0.1)
        stop.set()
        sampler.join()
        wall = time.perf_counter() - start
        cpu = group.seconds() - cpu - (time.process_time() - own)  # less this process's own sampling
        lingering = group.others()
        if code:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
            raise SystemExit(f"{command} exited with {code}")
    if lingering:
        raise SystemExit(f"{command}: processes {lingering} still running a minute after it exited")
    by_role: dict[str, list] = {}
    for role, seconds in seen.values():
        totals = by_role.setdefault(role, [0.0, 0])
        totals[0] += seconds
        totals[1] += 1
    print(json.dumps({"cpu": cpu, "wall": wall, "by_role": by_role}))


def _role(proc) -> str:
    """A process's part in the job: Ray workers together, other Python processes by their script."""
    name = proc.name()
    if name.startswith("ray::"):
        return "ray agents" if name.endswith("Agent") else "ray workers"
    if name.startswith("python") or name == "alexnet":
        script = next((Path(arg) for arg in proc.cmdline()[1:] if arg.endswith(".py") or arg.endswith("alexnet")),
                      Path(name))
        if script.name == "default_worker.py":
            return "ray workers"
        return "driver (alexnet)" if script.name == "alexnet" else f"{script.parent.name}/{script.name}"
    return name


def metered(command: list[str], env: dict) -> dict:
    """`meter` in a fresh process; one retry (on a loaded machine Ray's start can time out)."""
    for attempt in (1, 2):
        result = subprocess.run([sys.executable, __file__, "--", *command], capture_output=True, text=True,
                                env=env)
        if result.returncode == 0:
            return json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  (a run failed{', retrying' if attempt == 1 else ''}: {result.stderr.strip().splitlines()[-1]})")
    raise SystemExit(f"metered run failed:\n{result.stderr[-3000:]}")


if __name__ == "__main__":
    meter(sys.argv[2:] if sys.argv[1:2] == ["--"] else sys.argv[1:])
