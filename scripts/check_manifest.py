#!/usr/bin/env python3
"""Checks the Copilot deployment assets of holdfast workers.

For every manifest (by default every copilot/*/manifest.yml):

* the Worker Service schema as Copilot documents and validates it: allowed keys, types,
  durations, ranges and allowed values (subscribe.queue, count, taskdef_overrides, image,
  platform, cpu/memory as a Fargate size, ...), for the manifest and each of its
  `environments` overrides;
* what the manifest points at: the Dockerfile (multi-stage, exec-form ENTRYPOINT, non-root
  user) and, for a manifest in the workspace layout (copilot/<name>/manifest.yml), the
  addon templates (the policy grants exactly what the runtime needs; outputs are managed
  policies only, since Copilot injects any other output as an environment variable).

`--dockerfile FILE` and `--addon FILE` check a Dockerfile or an addon template on its own.

The worker's configuration (the names and values under `variables`, the stop timeout the
drain must fit in, the queue's visibility timeout) is not checked here: tests/deploy_manifest.rs
runs the worker's own configuration parser on each manifest (`cargo test --test deploy_manifest`).

Exit status: 0 when everything passes, 1 when something fails (each problem on an
`ERROR` line), 2 when the checker itself fails, so a broken checker never passes for a
failing check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # pragma: no cover - the validate script installs it
    sys.stderr.write("check_manifest.py needs PyYAML (scripts/validate-deploy.sh installs it)\n")
    sys.exit(2)

REPO = Path(__file__).resolve().parent.parent

NS = 1
MS = 1_000_000 * NS
SEC = 1_000 * MS
MIN = 60 * SEC
HOUR = 60 * MIN

# Fargate's ceiling for a container's stop timeout, in seconds.
FARGATE_MAX_STOP_TIMEOUT = 120

STOP_TIMEOUT_PATH = "ContainerDefinitions[0].StopTimeout"

# What the holdfast runtime calls beyond Copilot's own grants (ReceiveMessage, DeleteMessage).
REQUIRED_ACTIONS = frozenset({"sqs:ChangeMessageVisibility", "ecs:UpdateTaskProtection", "ecs:GetTaskProtection"})


# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------

_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": MS, "s": SEC, "m": MIN, "h": HOUR}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration(text: str) -> int | None:
    """Parses a duration the way Go's time.ParseDuration does (Copilot's manifest fields), in ns."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0
    if s.startswith("-"):
        return None  # no negative durations anywhere in a manifest
    s = s.lstrip("+")
    if not s:
        return None
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if not m:
            return None
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return int(round(total))


def human(ns: int) -> str:
    for unit, size in (("h", HOUR), ("m", MIN), ("s", SEC), ("ms", MS)):
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return "0s" if ns == 0 else f"{ns}ns"


# --------------------------------------------------------------------------------------------
# CloudFormation YAML (short-form intrinsic tags)
# --------------------------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    pass


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else ("Fn::GetAtt" if suffix == "GetAtt" else f"Fn::{suffix}")
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, file: Path | str, where: str, message: str) -> None:
        line = f"ERROR {display(file)}: {where + ': ' if where else ''}{message}"
        if line not in self.errors:
            self.errors.append(line)


def display(path: Path | str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------------------------
# The Worker Service schema (Copilot's manifest reference and its validation rules)
# --------------------------------------------------------------------------------------------

WORKLOAD_KEYS = {"name", "type", "environments"}
# Fields that `environments.<env>` may override (WorkerServiceConfig in Copilot).
CONFIG_KEYS = {
    "image", "entrypoint", "command", "cpu", "memory", "platform", "count", "exec", "variables",
    "env_file", "secrets", "storage", "logging", "sidecars", "subscribe", "publish", "network",
    "taskdef_overrides", "deployment", "observability",
}
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]+$")
PLATFORMS = {"linux/amd64", "linux/x86_64", "linux/arm", "linux/arm64", "windows/amd64", "windows/x86_64"}
# Fargate task sizes for Linux: CPU units -> the memory sizes (MiB) that go with them.
FARGATE_SIZES: dict[int, list[int]] = {
    256: [512, 1024, 2048],
    512: list(range(1024, 4097, 1024)),
    1024: list(range(2048, 8193, 1024)),
    2048: list(range(4096, 16385, 1024)),
    4096: list(range(8192, 30721, 1024)),
    8192: list(range(16384, 61441, 4096)),
    16384: list(range(32768, 122881, 8192)),
}
SHELLS = {"sh", "bash", "ash", "dash", "zsh", "/bin/sh", "/bin/bash", "/usr/bin/env", "/bin/ash", "/bin/dash"}


class ManifestChecker:
    def __init__(self, report: Report, root: Path):
        self.r = report
        self.root = root

    # -- helpers ----------------------------------------------------------------------------

    def _map(self, f: Path, where: str, value: Any, allowed: set[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.r.error(f, where, f"must be a map, not {type(value).__name__}")
            return {}
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.r.error(f, where, f"unknown field {key!r} (allowed: {', '.join(sorted(allowed))})")
        return value

    def _bool(self, f: Path, where: str, value: Any) -> None:
        if not isinstance(value, bool):
            self.r.error(f, where, f"must be true or false, not {value!r}")

    def _int(self, f: Path, where: str, value: Any, lo: int | None = None, hi: int | None = None) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.r.error(f, where, f"must be a whole number, not {value!r}")
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.r.error(f, where, f"{value} is out of range: {lo} to {hi}" if hi is not None else f"{value} must be at least {lo}")
            return None
        return value

    def _duration(
        self, f: Path, where: str, value: Any, lo: int = 0, hi: int | None = None, whole_seconds: bool = False
    ) -> int | None:
        if isinstance(value, bool) or not isinstance(value, str):
            hint = f" (write {value}s: Copilot reads a bare number as nanoseconds)" if isinstance(value, int) else ""
            self.r.error(f, where, f"must be a duration string such as 30s, 5m or 1h, not {value!r}{hint}")
            return None
        ns = go_duration(value)
        if ns is None:
            self.r.error(f, where, f"{value!r} is not a duration (Go syntax: 300ms, 30s, 5m, 1h30m)")
            return None
        if ns < lo or (hi is not None and ns > hi):
            self.r.error(f, where, f"{value} is out of range: {human(lo)} to {human(hi) if hi is not None else 'any'}")
            return None
        if whole_seconds and ns % SEC:
            self.r.error(f, where, f"{value} must be whole seconds (SQS takes seconds)")
            return None
        return ns

    # -- the manifest -----------------------------------------------------------------------

    def check_file(self, f: Path, workspace_name: str | None) -> None:
        try:
            doc = yaml.safe_load(f.read_text())
        except yaml.YAMLError as e:
            self.r.error(f, "", f"not valid YAML: {e}")
            return
        if not isinstance(doc, dict):
            self.r.error(f, "", "must be a YAML map")
            return
        for key in doc:
            if key not in WORKLOAD_KEYS | CONFIG_KEYS:
                self.r.error(f, "", f"unknown top-level field {key!r} for a Worker Service")
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            self.r.error(f, "name", "required")
        else:
            if not SERVICE_NAME.match(name) or "--" in name or name.endswith("-"):
                self.r.error(
                    f, "name", f"{name!r}: two or more lower-case letters, digits and single hyphens, starting with a letter"
                )
            if workspace_name is not None and name != workspace_name:
                self.r.error(f, "name", f"{name!r} must match its directory copilot/{workspace_name}/")
        if doc.get("type") != "Worker Service":
            self.r.error(f, "type", f"must be \"Worker Service\", not {doc.get('type')!r}")

        self.check_config(f, "", doc)
        hc = (doc.get("image") or {}).get("healthcheck") if isinstance(doc.get("image"), dict) else None
        command = hc.get("command") if isinstance(hc, dict) else None
        if isinstance(command, list) and command[-1:] == ["health"]:
            variables = doc.get("variables") or {}
            if not isinstance(variables, dict) or not variables.get("HOLDFAST_HEALTH_FILE"):
                self.r.error(
                    f, "image.healthcheck.command",
                    "the worker's health invocation reads HOLDFAST_HEALTH_FILE: set it in variables (e.g. /tmp/holdfast-health.json)",
                )
        envs = self._map(f, "environments", doc.get("environments"))
        for env_name, override in envs.items():
            where = f"environments.{env_name}"
            override = self._map(f, where, override, CONFIG_KEYS)
            self.check_config(f, where + ".", override, partial=True)

    def check_config(self, f: Path, p: str, d: dict, partial: bool = False) -> None:
        image = d.get("image")
        if image is None and not partial:
            self.r.error(f, p + "image", "required (build or location)")
        elif image is not None:
            self.check_image(f, p + "image", image, partial)
        for key in ("entrypoint", "command"):
            if key in d:
                self.check_override(f, p + key, d[key])
        cpu, memory = d.get("cpu"), d.get("memory")
        if cpu is not None:
            self._int(f, p + "cpu", cpu)
        if memory is not None:
            self._int(f, p + "memory", memory)
        platform = d.get("platform")
        if platform is not None:
            self.check_platform(f, p + "platform", platform)
        is_windows = isinstance(platform, str) and platform.lower().startswith("windows")
        if isinstance(cpu, int) and isinstance(memory, int) and not is_windows:
            if cpu not in FARGATE_SIZES:
                self.r.error(f, p + "cpu", f"{cpu} is not a Fargate CPU size ({', '.join(map(str, FARGATE_SIZES))})")
            elif memory not in FARGATE_SIZES[cpu]:
                sizes = FARGATE_SIZES[cpu]
                step = f" in {sizes[1] - sizes[0]} MiB steps" if len(sizes) > 3 else ""
                self.r.error(
                    f, p + "memory",
                    f"{memory} MiB does not go with cpu {cpu} on Fargate "
                    + (f"({sizes[0]}-{sizes[-1]} MiB{step})" if step else f"({', '.join(map(str, sizes))} MiB)"),
                )
        elif (cpu is None) != (memory is None) and not partial:
            self.r.error(f, p + "cpu/memory", "set both or neither")
        if "count" in d:
            self.check_count(f, p + "count", d["count"], platform)
        if "exec" in d and not isinstance(d["exec"], (bool, dict)):
            self.r.error(f, p + "exec", "must be true, false or a map")
        variables = self._map(f, p + "variables", d.get("variables"))
        for k, v in variables.items():
            if isinstance(v, dict):
                self._map(f, f"{p}variables.{k}", v, {"from_cfn"})
        if "env_file" in d:
            env_file = d["env_file"]
            if not isinstance(env_file, str) or not env_file.endswith(".env"):
                self.r.error(f, p + "env_file", "must be a path ending in .env")
            elif not (self.root / env_file).is_file():
                self.r.error(f, p + "env_file", f"{env_file} does not exist (paths are relative to the workspace root)")
        self._map(f, p + "secrets", d.get("secrets"))
        storage = self._map(f, p + "storage", d.get("storage"), {"ephemeral", "readonly_fs", "volumes"})
        if "ephemeral" in storage:
            self._int(f, p + "storage.ephemeral", storage["ephemeral"], 20, 200)
        self._map(f, p + "logging", d.get("logging"))
        self._map(f, p + "sidecars", d.get("sidecars"))
        self._map(f, p + "network", d.get("network"), {"vpc", "connect"})
        if "subscribe" in d:
            self.check_subscribe(f, p + "subscribe", d["subscribe"])
        publish = self._map(f, p + "publish", d.get("publish"), {"topics"})
        for i, topic in enumerate(publish.get("topics") or []):
            t = self._map(f, f"{p}publish.topics[{i}]", topic, {"name", "fifo"})
            if not isinstance(t.get("name"), str) or not re.fullmatch(r"[a-zA-Z0-9_-]+", t.get("name") or ""):
                self.r.error(f, f"{p}publish.topics[{i}].name", "required: letters, digits, _ and -")
        if "taskdef_overrides" in d:
            self.check_taskdef_overrides(f, p + "taskdef_overrides", d["taskdef_overrides"])
        deployment = self._map(f, p + "deployment", d.get("deployment"), {"rolling", "rollback_alarms"})
        if "rolling" in deployment and str(deployment["rolling"]).lower() not in ("default", "recreate"):
            self.r.error(f, p + "deployment.rolling", f"{deployment['rolling']!r} must be default or recreate")
        alarms = deployment.get("rollback_alarms")
        if isinstance(alarms, dict):
            for key, value in self._map(f, p + "deployment.rollback_alarms", alarms, {"cpu_utilization", "memory_utilization", "messages_delayed"}).items():
                if isinstance(value, dict):
                    continue
                if key == "messages_delayed":
                    self._int(f, f"{p}deployment.rollback_alarms.{key}", value, 0)
                else:
                    self._int(f, f"{p}deployment.rollback_alarms.{key}", value, 0, 100)
        observability = self._map(f, p + "observability", d.get("observability"), {"tracing"})
        if "tracing" in observability and str(observability["tracing"]).lower() != "awsxray":
            self.r.error(f, p + "observability.tracing", "the only tracing vendor is awsxray")

    def check_image(self, f: Path, p: str, image: Any, partial: bool) -> None:
        image = self._map(f, p, image, {"build", "location", "credentials", "labels", "depends_on", "healthcheck"})
        if "build" in image and "location" in image:
            self.r.error(f, p, "build and location are mutually exclusive")
        if not partial and "build" not in image and "location" not in image:
            self.r.error(f, p, "needs build or location")
        if "location" in image and not isinstance(image["location"], str):
            self.r.error(f, p + ".location", "must be an image reference")
        if "build" in image:
            build = image["build"]
            if isinstance(build, str):
                dockerfile, context = build, str(Path(build).parent)
            elif isinstance(build, dict):
                build = self._map(f, p + ".build", build, {"dockerfile", "context", "target", "cache_from", "args"})
                context = build.get("context")
                dockerfile = build.get("dockerfile")
                if dockerfile is None and context is None:
                    self.r.error(f, p + ".build", "needs dockerfile or context")
                    return
                if dockerfile is None:
                    dockerfile = str(Path(context) / "Dockerfile")
                if context is None:
                    context = str(Path(dockerfile).parent)
                if "args" in build:
                    self._map(f, p + ".build.args", build["args"])
            else:
                self.r.error(f, p + ".build", "must be a Dockerfile path or a map")
                return
            if not (self.root / context).is_dir():
                self.r.error(f, p + ".build", f"context {context!r} is not a directory of the workspace root {display(self.root)}")
            df = self.root / dockerfile
            if not df.is_file():
                self.r.error(f, p + ".build", f"Dockerfile {dockerfile!r} does not exist (paths are relative to the workspace root)")
            else:
                check_dockerfile(df, self.r)
        for key in ("labels", "depends_on"):
            self._map(f, f"{p}.{key}", image.get(key))
        if "depends_on" in image:
            for container, condition in (image.get("depends_on") or {}).items():
                if str(condition).lower() not in ("start", "healthy", "complete", "success"):
                    self.r.error(f, f"{p}.depends_on.{container}", "must be start, healthy, complete or success")
        hc = image.get("healthcheck")
        if isinstance(hc, dict):
            hc = self._map(f, p + ".healthcheck", hc, {"command", "interval", "retries", "timeout", "start_period"})
            for key in ("interval", "timeout", "start_period"):
                if key in hc:
                    self._duration(f, f"{p}.healthcheck.{key}", hc[key])
            if "retries" in hc:
                self._int(f, p + ".healthcheck.retries", hc["retries"], 0)
            if "command" in hc:
                self.check_healthcheck_command(f, p + ".healthcheck.command", hc["command"])

    def check_healthcheck_command(self, f: Path, p: str, command: Any) -> None:
        # ECS takes ["CMD", exe, args...] (run as is) or ["CMD-SHELL", "text"] (run by /bin/sh,
        # which the distroless runtime image does not have).
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            self.r.error(f, p, 'must be a list of strings such as ["CMD", "/usr/local/bin/worker", "health"]')
            return
        if command[0] == "CMD-SHELL":
            self.r.error(f, p, "CMD-SHELL needs /bin/sh, which the runtime image does not have: use CMD with the worker's health invocation")
        elif command[0] != "CMD":
            self.r.error(f, p, 'must start with "CMD" (or "CMD-SHELL")')
        elif len(command) < 2:
            self.r.error(f, p, "names no program to run after CMD")

    def check_override(self, f: Path, p: str, value: Any) -> None:
        if isinstance(value, str):
            words = value.split()
        elif isinstance(value, list) and all(isinstance(w, str) for w in value):
            words = value
        else:
            self.r.error(f, p, "must be a string or a list of strings")
            return
        if words and (words[0] in SHELLS or Path(words[0]).name in {"sh", "bash", "dash", "ash"}):
            self.r.error(
                f, p, f"runs the worker under {words[0]!r}: a shell does not pass SIGTERM on, so the worker "
                "would be killed without draining; use the image's exec-form ENTRYPOINT"
            )

    def check_platform(self, f: Path, p: str, platform: Any) -> None:
        if isinstance(platform, str):
            if platform.lower() not in PLATFORMS:
                self.r.error(f, p, f"{platform!r} must be one of {', '.join(sorted(PLATFORMS))}")
        elif isinstance(platform, dict):
            platform = self._map(f, p, platform, {"osfamily", "architecture"})
            if ("osfamily" in platform) != ("architecture" in platform):
                self.r.error(f, p, "osfamily and architecture go together")
            arch = str(platform.get("architecture", "")).lower()
            if arch and arch not in ("x86_64", "amd64", "arm64", "arm"):
                self.r.error(f, p + ".architecture", f"{arch!r} is not x86_64, amd64 or arm64")
        else:
            self.r.error(f, p, "must be a string like linux/x86_64 or a map")

    def check_count(self, f: Path, p: str, count: Any, platform: Any) -> None:
        if isinstance(count, int) and not isinstance(count, bool):
            self._int(f, p, count, 0)
            return
        count = self._map(
            f, p, count, {"range", "cooldown", "cpu_percentage", "memory_percentage", "queue_delay", "spot", "requests", "response_time"}
        )
        for key in ("requests", "response_time"):
            if key in count:
                self.r.error(f, f"{p}.{key}", "is not an autoscaling field for a Worker Service (it has no load balancer)")
        scaling = [k for k in ("cpu_percentage", "memory_percentage", "queue_delay") if k in count]
        if "spot" in count:
            self._int(f, p + ".spot", count["spot"], 0)
            if scaling or "range" in count:
                self.r.error(f, p, "spot and range/autoscaling are mutually exclusive")
        arm = isinstance(platform, str) and "arm" in platform.lower()
        if "range" in count:
            rng = count["range"]
            if isinstance(rng, str):
                m = re.fullmatch(r"(\d+)-(\d+)", rng)
                if not m:
                    self.r.error(f, p + ".range", f"{rng!r} must be MIN-MAX, like 1-10")
                elif int(m.group(1)) > int(m.group(2)):
                    self.r.error(f, p + ".range", f"min {m.group(1)} is greater than max {m.group(2)}")
            elif isinstance(rng, dict):
                rng = self._map(f, p + ".range", rng, {"min", "max", "spot_from"})
                lo = self._int(f, p + ".range.min", rng.get("min"), 0) if "min" in rng else None
                hi = self._int(f, p + ".range.max", rng.get("max"), 0) if "max" in rng else None
                if "min" not in rng or "max" not in rng:
                    self.r.error(f, p + ".range", "needs min and max")
                elif lo is not None and hi is not None and lo > hi:
                    self.r.error(f, p + ".range", f"min {lo} is greater than max {hi}")
                if "spot_from" in rng:
                    self._int(f, p + ".range.spot_from", rng["spot_from"], 0)
                    if arm:
                        self.r.error(f, p + ".range.spot_from", "Fargate Spot does not run ARM tasks")
            else:
                self.r.error(f, p + ".range", "must be MIN-MAX or a map of min, max, spot_from")
            if not scaling:
                self.r.error(f, p, "range needs at least one of cpu_percentage, memory_percentage, queue_delay")
        elif scaling:
            self.r.error(f, p, f"{', '.join(scaling)} needs range")
        if "cooldown" in count:
            self.check_cooldown(f, p + ".cooldown", count["cooldown"])
            if not scaling:
                self.r.error(f, p + ".cooldown", "needs an autoscaling field")
        for key in ("cpu_percentage", "memory_percentage"):
            if key in count:
                value = count[key]
                if isinstance(value, dict):
                    value = self._map(f, f"{p}.{key}", value, {"value", "cooldown"})
                    if "cooldown" in value:
                        self.check_cooldown(f, f"{p}.{key}.cooldown", value["cooldown"])
                    self._int(f, f"{p}.{key}.value", value.get("value"), 0, 100)
                else:
                    self._int(f, f"{p}.{key}", value, 0, 100)
        if "queue_delay" in count:
            qd = self._map(f, p + ".queue_delay", count["queue_delay"], {"acceptable_latency", "msg_processing_time", "cooldown"})
            for key in ("acceptable_latency", "msg_processing_time"):
                if key not in qd:
                    self.r.error(f, f"{p}.queue_delay", f"needs {key}")
            latency = self._duration(f, p + ".queue_delay.acceptable_latency", qd["acceptable_latency"]) if "acceptable_latency" in qd else None
            processing = self._duration(f, p + ".queue_delay.msg_processing_time", qd["msg_processing_time"]) if "msg_processing_time" in qd else None
            if latency == 0:
                self.r.error(f, p + ".queue_delay.acceptable_latency", "cannot be 0")
            if processing == 0:
                self.r.error(f, p + ".queue_delay.msg_processing_time", "cannot be 0")
            if latency and processing and processing > latency:
                self.r.error(f, p + ".queue_delay", "msg_processing_time cannot be longer than acceptable_latency")
            if "cooldown" in qd:
                self.check_cooldown(f, p + ".queue_delay.cooldown", qd["cooldown"])

    def check_cooldown(self, f: Path, p: str, value: Any) -> None:
        cooldown = self._map(f, p, value, {"in", "out"})
        for key in ("in", "out"):
            if key in cooldown:
                self._duration(f, f"{p}.{key}", cooldown[key])

    def check_queue(self, f: Path, p: str, q: Any) -> None:
        q = self._map(f, p, q, {"retention", "delay", "timeout", "dead_letter", "fifo"})
        if "retention" in q:
            self._duration(f, p + ".retention", q["retention"], 60 * SEC, 336 * HOUR, whole_seconds=True)
        if "delay" in q:
            self._duration(f, p + ".delay", q["delay"], 0, 15 * MIN, whole_seconds=True)
        if "timeout" in q:
            self._duration(f, p + ".timeout", q["timeout"], 0, 12 * HOUR, whole_seconds=True)
        if "dead_letter" in q:
            dl = self._map(f, p + ".dead_letter", q["dead_letter"], {"tries"})
            if "tries" not in dl:
                self.r.error(f, p + ".dead_letter", "needs tries")
            else:
                # SQS's maxReceiveCount: 1 to 1,000.
                self._int(f, p + ".dead_letter.tries", dl["tries"], 1, 1000)
        if "fifo" in q:
            fifo = q["fifo"]
            if isinstance(fifo, dict):
                fifo = self._map(f, p + ".fifo", fifo, {"content_based_deduplication", "deduplication_scope", "throughput_limit", "high_throughput"})
                for key in ("content_based_deduplication", "high_throughput"):
                    if key in fifo:
                        self._bool(f, f"{p}.fifo.{key}", fifo[key])
                if "deduplication_scope" in fifo and fifo["deduplication_scope"] not in ("messageGroup", "queue"):
                    self.r.error(f, p + ".fifo.deduplication_scope", "must be messageGroup or queue")
                if "throughput_limit" in fifo and fifo["throughput_limit"] not in ("perQueue", "perMessageGroupId"):
                    self.r.error(f, p + ".fifo.throughput_limit", "must be perQueue or perMessageGroupId")
                if "high_throughput" in fifo and ("throughput_limit" in fifo or "deduplication_scope" in fifo):
                    self.r.error(f, p + ".fifo", "high_throughput excludes deduplication_scope and throughput_limit")
                if fifo.get("throughput_limit") == "perMessageGroupId" and fifo.get("deduplication_scope") == "queue":
                    self.r.error(f, p + ".fifo", 'throughput_limit must be perQueue when deduplication_scope is "queue"')
            else:
                self._bool(f, p + ".fifo", fifo)

    def check_subscribe(self, f: Path, p: str, sub: Any) -> None:
        sub = self._map(f, p, sub, {"topics", "queue"})
        if "queue" in sub:
            self.check_queue(f, p + ".queue", sub["queue"])
        topics = sub.get("topics")
        if topics is not None and not isinstance(topics, list):
            self.r.error(f, p + ".topics", "must be a list")
            return
        for i, topic in enumerate(topics or []):
            tp = f"{p}.topics[{i}]"
            t = self._map(f, tp, topic, {"name", "service", "filter_policy", "queue"})
            if not isinstance(t.get("name"), str) or not re.fullmatch(r"[a-zA-Z0-9_-]+", t.get("name") or ""):
                self.r.error(f, tp + ".name", "required: letters, digits, _ and -")
            svc = t.get("service")
            if not isinstance(svc, str) or not SERVICE_NAME.match(svc) or "--" in svc or svc.endswith("-"):
                self.r.error(f, tp + ".service", "required: a Copilot service name")
            if "queue" in t and not isinstance(t["queue"], bool):
                self.check_queue(f, tp + ".queue", t["queue"])

    def check_taskdef_overrides(self, f: Path, p: str, rules: Any) -> None:
        if not isinstance(rules, list):
            self.r.error(f, p, "must be a list of {path, value} rules")
            return
        for i, rule in enumerate(rules):
            rp = f"{p}[{i}]"
            rule = self._map(f, rp, rule, {"path", "value"})
            path = rule.get("path")
            if not isinstance(path, str) or not path:
                self.r.error(f, rp + ".path", "required")
                continue
            if "value" not in rule:
                self.r.error(f, rp + ".value", "required")
            if path == "Family" or re.fullmatch(r"ContainerDefinitions\[\d+\]\.Name", path):
                self.r.error(f, rp + ".path", f"{path} cannot be overridden (Copilot refuses it)")
            if path == STOP_TIMEOUT_PATH and "value" in rule:
                self._int(f, rp + ".value", rule["value"], 0, FARGATE_MAX_STOP_TIMEOUT)

# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[int, str, str]] = []
    buf, start = "", 0
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        parts = buf.split(None, 1)
        out.append((start, parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        buf = ""
    if buf:
        parts = buf.split(None, 1)
        out.append((start, parts[0].upper(), parts[1] if len(parts) > 1 else ""))
    return out


def check_dockerfile(path: Path, r: Report) -> None:
    instructions = dockerfile_instructions(path.read_text())
    froms = [i for i, (_, ins, _) in enumerate(instructions) if ins == "FROM"]
    if not froms:
        r.error(path, "", "no FROM")
        return
    if len(froms) < 2:
        r.error(path, "", "must be a multi-stage build (build in one stage, run from a small runtime image)")
    final = instructions[froms[-1] :]
    if not any(ins == "RUN" and "cargo build" in args and "--release" in args and "--locked" in args for _, ins, args in instructions):
        r.error(path, "", "no `cargo build --release --locked` step")
    entry = [(n, a) for n, ins, a in final if ins == "ENTRYPOINT"]
    cmds = [(n, a) for n, ins, a in final if ins == "CMD"]
    for kind, found in (("ENTRYPOINT", entry), ("CMD", cmds)):
        for line, args in found:
            try:
                parsed = json.loads(args)
                ok = isinstance(parsed, list) and all(isinstance(x, str) for x in parsed)
            except ValueError:
                ok = False
            if not ok:
                r.error(
                    path, f"line {line}",
                    f"{kind} {args} is shell form: /bin/sh -c becomes PID 1 and does not pass SIGTERM on, so the "
                    f'worker never drains; write {kind} ["/path/to/worker"]',
                )
            elif parsed and (parsed[0] in SHELLS or Path(parsed[0]).name in {"sh", "bash", "dash", "ash"}):
                r.error(path, f"line {line}", f"{kind} runs a shell ({parsed[0]}), which does not pass SIGTERM on")
    if not entry:
        r.error(path, "", "the final stage has no ENTRYPOINT (exec form, the worker binary)")
    users = [(n, a.strip()) for n, ins, a in final if ins == "USER"]
    if not users:
        r.error(path, "", "the final stage sets no USER: the worker would run as root")
    else:
        line, user = users[-1]
        if user.split(":")[0] in ("root", "0"):
            r.error(path, f"line {line}", f"USER {user} is root")


# --------------------------------------------------------------------------------------------
# Addon templates
# --------------------------------------------------------------------------------------------


def _listify(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def check_addon(path: Path, r: Report) -> set[str]:
    """Checks one addon template; returns the actions its managed policies allow."""
    try:
        tpl = yaml.load(path.read_text(), Loader=CfnLoader)
    except yaml.YAMLError as e:
        r.error(path, "", f"not valid YAML: {e}")
        return set()
    if not isinstance(tpl, dict):
        r.error(path, "", "not a CloudFormation template")
        return set()
    params = tpl.get("Parameters") or {}
    for name in ("App", "Env", "Name"):
        if name not in params:
            r.error(path, "Parameters", f"Copilot passes {name}; the template must declare it")
    resources = tpl.get("Resources") or {}
    if not resources:
        r.error(path, "Resources", "Copilot needs at least one resource")
    policies = {k: v for k, v in resources.items() if isinstance(v, dict) and v.get("Type") == "AWS::IAM::ManagedPolicy"}
    for key, out in (tpl.get("Outputs") or {}).items():
        value = out.get("Value") if isinstance(out, dict) else None
        ref = value.get("Ref") if isinstance(value, dict) else None
        if ref in policies:
            continue
        resource_type = (resources.get(ref) or {}).get("Type") if isinstance(ref, str) else None
        if resource_type == "AWS::EC2::SecurityGroup":  # attached to the service, not injected
            continue
        env_name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()
        r.error(
            path, f"Outputs.{key}",
            f"is not a managed policy, so Copilot injects it into the container as {env_name}: output the "
            "managed policy only",
        )

    allowed: set[str] = set()
    for name, res in policies.items():
        doc = (res.get("Properties") or {}).get("PolicyDocument") or {}
        actions: set[str] = set()
        for i, st in enumerate(_listify(doc.get("Statement") or [])):
            where = f"Resources.{name}.Statement[{i}]"
            if not isinstance(st, dict):
                continue
            if "NotAction" in st or "NotResource" in st:
                r.error(path, where, "NotAction/NotResource grant more than they name")
            if st.get("Effect") != "Allow":
                continue
            st_actions = {a for a in _listify(st.get("Action") or []) if isinstance(a, str)}
            for a in st_actions:
                if "*" in a:
                    r.error(path, where, f"wildcard action {a!r}")
            if st_actions & REQUIRED_ACTIONS and any(res == "*" for res in _listify(st.get("Resource"))):
                r.error(path, where, 'Resource "*": scope it to the service\'s queue and the environment\'s tasks')
            actions |= st_actions
        if actions & REQUIRED_ACTIONS and actions != REQUIRED_ACTIONS:
            extra = sorted(actions - REQUIRED_ACTIONS)
            missing = sorted(REQUIRED_ACTIONS - actions)
            r.error(
                path, f"Resources.{name}",
                "the holdfast policy must grant exactly " + ", ".join(sorted(REQUIRED_ACTIONS))
                + (f"; extra: {', '.join(extra)}" if extra else "") + (f"; missing: {', '.join(missing)}" if missing else ""),
            )
        allowed |= actions
    return allowed


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def check_workspace_addons(manifest: Path, r: Report, holdfast_templates: dict[Path, str]) -> None:
    addons = manifest.parent / "addons"
    templates = sorted(p for p in addons.glob("*.y*ml") if p.name != "addons.parameters.yml") if addons.is_dir() else []
    if not templates:
        r.error(
            manifest, "addons", f"no addon template in {display(addons)}: the task role would lack "
            + ", ".join(sorted(REQUIRED_ACTIONS)) + " (Copilot grants only ReceiveMessage and DeleteMessage)",
        )
        return
    granted: set[str] = set()
    for t in templates:
        actions = check_addon(t, r)
        granted |= actions
        if actions & REQUIRED_ACTIONS:
            holdfast_templates[t] = t.read_text()
    missing = REQUIRED_ACTIONS - granted
    if missing:
        r.error(manifest, "addons", f"no addon policy grants {', '.join(sorted(missing))}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifests", nargs="*", type=Path, help="manifest files (default: copilot/*/manifest.yml)")
    ap.add_argument("--root", type=Path, default=REPO, help="workspace root (image.build paths are relative to it)")
    ap.add_argument("--dockerfile", type=Path, action="append", default=[], help="check a Dockerfile on its own")
    ap.add_argument("--addon", type=Path, action="append", default=[], help="check an addon template on its own")
    args = ap.parse_args(argv)

    report = Report()
    try:
        root = args.root.resolve()
        manifests = args.manifests
        if not manifests and not args.dockerfile and not args.addon:
            manifests = sorted((root / "copilot").glob("*/manifest.yml"))
            if not manifests:
                report.error(root / "copilot", "", "no copilot/*/manifest.yml found")
        checker = ManifestChecker(report, root)
        holdfast_templates: dict[Path, str] = {}
        for m in manifests:
            m = m.resolve()
            in_workspace = m.name == "manifest.yml" and m.parent.parent == root / "copilot"
            checker.check_file(m, m.parent.name if in_workspace else None)
            if in_workspace:
                check_workspace_addons(m, report, holdfast_templates)
            print(f"checked {display(m)}")
        if len(set(holdfast_templates.values())) > 1:
            report.error(
                root / "copilot", "addons", "the holdfast policy templates differ between services ("
                + ", ".join(display(p) for p in holdfast_templates) + "): keep the copies identical",
            )
        for d in args.dockerfile:
            check_dockerfile(d, report)
            print(f"checked {display(d)}")
        for a in args.addon:
            check_addon(a, report)
            print(f"checked {display(a)}")
    except Exception:  # a bug in the checker must not read as a verdict on the assets
        import traceback

        traceback.print_exc()
        print("BROKEN: scripts/check_manifest.py failed unexpectedly (see above)", file=sys.stderr)
        return 2

    for line in report.errors:
        print(line)
    if report.errors:
        print(f"{len(report.errors)} problem(s) found")
        return 1
    print("no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
