"""The roles.yaml ``serving:`` section, parsed and validated into dataclasses. Pure.

Example (all keys optional; defaults shown in comments)::

    serving:
      engine: sglang                  # sglang | vllm
      model_path: deepseek-ai/DeepSeek-V3
      python: python3                 # interpreter on the hosts
      env_file: /opt/deepep/unified-env.sh   # sourced before launching; missing = that host fails
      env: {NCCL_SOCKET_IFNAME: eth0, GLOO_SOCKET_IFNAME: eth0}
      forward_env: [HF_TOKEN]         # copied from the controller's environment, never printed
      run_dir: ~/.cluster/run         # on the hosts; file names carry host and port (NFS homes)
      bootstrap_port: 8998            # SGLang prefill bootstrap server, passed to every server
      side_channel_port: 5600         # vLLM NIXL side channel base port
      prefill: {port: 30000, tp_size: 8, nnodes: 1, dist_init_port: 5000, extra_args: "--trust-remote-code"}
      decode:  {port: 30001, tp_size: 8, nnodes: 1, dist_init_port: 5000, env: {...}}
      router:  {host: local, port: 8000, policy: cache_aware, metrics_port: 29000}

Errors name the file and the key: ``roles.yaml: serving.prefill.port: expected an
integer 1-65535, got 'abc'`` (:class:`cluster.errors.InventoryError`, exit 2); overrides
name the parameter (``prefill_port: expected …``, a :class:`cluster.errors.ParameterError`
the CLI shows as ``--prefill-port: …``). Values that reach a remote command line as an
argument (model path, interpreter, paths, addresses) may not start with ``-``: the
command would take them for an option.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InputError, InventoryError, ParameterError
from ..shell import ENV_NAME
from . import engines

PREFILL = "prefill"
DECODE = "decode"
ROLES = (PREFILL, DECODE)
DEFAULT_ENGINE = "sglang"
DEFAULT_RUN_DIR = "~/.cluster/run"
DEFAULT_BOOTSTRAP_PORT = 8998
DEFAULT_SIDE_CHANNEL_PORT = 5600
DEFAULT_DIST_INIT_PORT = 5000
DEFAULT_ROUTER_PORT = 8000
# sglang-router and vllm-router both start a Prometheus exporter on 29000 by default, and
# sglang-router 0.3.x panics at start when that port is taken: we always pass it.
DEFAULT_ROUTER_METRICS_PORT = 29000


@dataclass(frozen=True)
class RoleConfig:
    """Settings of one role (prefill or decode). ``port=None`` = the engine's default."""

    port: int | None = None
    tp_size: int = 1
    nnodes: int = 1
    dist_init_port: int = DEFAULT_DIST_INIT_PORT
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RouterConfig:
    """Where and how the PD router runs. ``host=None`` means no router is started.

    ``host`` is an address (or ``local`` = the controller). ``bind`` is the
    address the router listens on (default: ``host``, or 127.0.0.1 for local).
    ``launcher`` replaces the engine's default router command (e.g. ``smg``).
    ``metrics_port`` is the router's Prometheus port (bound on ``bind`` too).
    """

    host: str | None = None
    port: int = DEFAULT_ROUTER_PORT
    metrics_port: int = DEFAULT_ROUTER_METRICS_PORT
    policy: str | None = None
    bind: str | None = None
    launcher: tuple[str, ...] = ()
    env_file: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServingConfig:
    """Everything needed to build the PD launch commands, minus the host lists."""

    engine: str = DEFAULT_ENGINE
    model_path: str | None = None
    python: str = "python3"
    env_file: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    forward_env: tuple[str, ...] = ()
    # Variables given on the command line (``start-pd --env``): secret like forward_env's.
    given_env: tuple[str, ...] = ()
    run_dir: str = DEFAULT_RUN_DIR
    bootstrap_port: int = DEFAULT_BOOTSTRAP_PORT
    side_channel_port: int = DEFAULT_SIDE_CHANNEL_PORT
    prefill: RoleConfig = field(default_factory=RoleConfig)
    decode: RoleConfig = field(default_factory=RoleConfig)
    router: RouterConfig = field(default_factory=RouterConfig)

    def role(self, name: str) -> RoleConfig:
        """The settings of role ``prefill`` or ``decode``."""
        if name == PREFILL:
            return self.prefill
        if name == DECODE:
            return self.decode
        raise InputError(f"unknown serving role {name!r}: expected prefill or decode")

    def port(self, role: str) -> int:
        """The HTTP port of ``role``: explicit setting, else the engine's default."""
        explicit = self.role(role).port
        return explicit if explicit is not None else engines.get(self.engine).default_ports[role]

    def with_overrides(self, **kwargs: Any) -> "ServingConfig":
        """Copy with CLI overrides applied; a value of None means "not given".

        Accepted keys: engine, model_path, python, env_file, run_dir, bootstrap_port,
        side_channel_port, env (dict, merged over the file's; its values are secret:
        never shown or recorded), tp_size / nnodes /
        dist_init_port (both roles), prefill_port, decode_port, prefill_tp_size,
        decode_tp_size, prefill_nnodes, decode_nnodes, extra_args (string or list,
        appended to both roles' args, so later flags win), prefill_extra_args,
        decode_extra_args, router_host, router_port, router_metrics_port, router_policy,
        router_bind.
        Bad values raise `ParameterError` naming the key (``prefill_port``).
        """
        given = {k: v for k, v in kwargs.items() if v is not None}
        unknown = sorted(set(given) - _OVERRIDE_KEYS)
        if unknown:
            raise InputError(f"unknown serving override(s): {', '.join(unknown)}")
        ctx = _Ctx("command line", option_style=True)
        top: dict[str, Any] = {}
        for key in ("engine", "model_path", "python", "env_file", "run_dir"):
            if key in given:
                top[key] = _CHECKERS[key](given[key], ctx.at(key))
        for key in ("bootstrap_port", "side_channel_port"):
            if key in given:
                top[key] = _port(given[key], ctx.at(key))
        if "env" in given:
            merged = dict(self.env)
            extra = _env(given["env"], ctx.at("env"))
            merged.update(extra)
            top["env"] = tuple(merged.items())
            top["given_env"] = tuple(dict.fromkeys(self.given_env + tuple(extra)))
        roles = {PREFILL: self.prefill, DECODE: self.decode}
        for role in ROLES:
            roles[role] = _role_overrides(roles[role], role, given, ctx)
        top.update(prefill=roles[PREFILL], decode=roles[DECODE])
        top["router"] = _router_overrides(self.router, given, ctx)
        return dataclasses.replace(self, **top)


def parse_serving(data: Mapping[str, Any] | None, *, source: str) -> ServingConfig:
    """Validate the ``serving:`` mapping of ``source`` (a file name) into a ServingConfig.

    ``None`` (no section) gives the defaults. Unknown keys and bad values raise
    InventoryError with ``"<source>: serving.<key>: <problem>"``.
    """
    ctx = _Ctx(source).at("serving")
    if data is None:
        return ServingConfig()
    doc = _mapping(data, ctx)
    _reject_unknown(doc, _TOP_KEYS, ctx)
    values: dict[str, Any] = {}
    for key in ("engine", "model_path", "python", "env_file", "run_dir"):
        if doc.get(key) is not None:
            values[key] = _CHECKERS[key](doc[key], ctx.at(key))
    for key in ("bootstrap_port", "side_channel_port"):
        if key in doc:
            values[key] = _port(doc[key], ctx.at(key))
    if "env" in doc:
        values["env"] = tuple(_env(doc["env"], ctx.at("env")).items())
    if "forward_env" in doc:
        values["forward_env"] = _forward_env(doc["forward_env"], ctx.at("forward_env"))
    for role in ROLES:
        if doc.get(role) is not None:
            values[role] = _parse_role(doc[role], ctx.at(role))
    if doc.get("router") is not None:
        values["router"] = _parse_router(doc["router"], ctx.at("router"))
    return ServingConfig(**values)


# --- internals ---------------------------------------------------------------------------

_TOP_KEYS = (
    "engine", "model_path", "python", "env_file", "env", "forward_env", "run_dir",
    "bootstrap_port", "side_channel_port", "prefill", "decode", "router",
)
_ROLE_KEYS = ("port", "tp_size", "nnodes", "dist_init_port", "extra_args", "env")
_ROUTER_KEYS = ("host", "port", "metrics_port", "policy", "bind", "launcher", "env_file", "extra_args")
_OVERRIDE_KEYS = frozenset({
    "engine", "model_path", "python", "env_file", "run_dir", "bootstrap_port",
    "side_channel_port", "env", "tp_size", "nnodes", "dist_init_port", "extra_args",
    "prefill_port", "decode_port", "prefill_tp_size", "decode_tp_size", "prefill_nnodes",
    "decode_nnodes", "prefill_extra_args", "decode_extra_args", "router_host",
    "router_port", "router_policy", "router_bind", "router_metrics_port", "prefill_dist_init_port",
    "decode_dist_init_port",
})


@dataclass(frozen=True)
class _Ctx:
    """Where a value came from, for error messages (file + dotted key, or CLI option)."""

    source: str
    key: str = ""
    option_style: bool = False

    def at(self, key: str) -> "_Ctx":
        joined = f"{self.key}.{key}" if self.key and not self.option_style else key
        return dataclasses.replace(self, key=joined)

    def fail(self, problem: str, value: Any = dataclasses.MISSING) -> InputError:
        got = "" if value is dataclasses.MISSING else f", got {value!r}"
        if self.option_style:
            return ParameterError(self.key, "{name}: " + f"{problem}{got}")
        return InventoryError(f"{self.source}: {self.key}: {problem}{got}")


def _mapping(value: Any, ctx: _Ctx) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.fail("expected a mapping", value)
    return value


def _reject_unknown(doc: Mapping[str, Any], allowed: tuple[str, ...], ctx: _Ctx) -> None:
    for key in doc:
        if key not in allowed:
            raise ctx.at(str(key)).fail(f"unknown key (expected one of: {', '.join(allowed)})")


def _string(value: Any, ctx: _Ctx) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail("expected a non-empty string", value)
    return value.strip()


def _argument(value: Any, ctx: _Ctx) -> str:
    """A non-empty string that goes on a remote command line as an argument."""
    text = _string(value, ctx)
    if text.startswith("-"):
        raise ctx.fail("may not start with '-' (it would be read as an option)", value)
    return text


def _engine(value: Any, ctx: _Ctx) -> str:
    text = _string(value, ctx).lower()
    if text not in engines.NAMES:
        raise ctx.fail(f"expected one of {', '.join(engines.NAMES)}", value)
    return text


def _int(value: Any, ctx: _Ctx, low: int, high: int, what: str) -> int:
    # bool is an int subclass; "yes" in YAML must not become port 1.
    if isinstance(value, bool):
        raise ctx.fail(f"expected {what}", value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not low <= value <= high:
        raise ctx.fail(f"expected {what}", value)
    return value


def _port(value: Any, ctx: _Ctx) -> int:
    return _int(value, ctx, 1, 65535, "an integer 1-65535")


def _positive(value: Any, ctx: _Ctx) -> int:
    return _int(value, ctx, 1, 1_000_000, "a positive integer")


def _args(value: Any, ctx: _Ctx) -> tuple[str, ...]:
    """extra_args: a shell-like string (split with shlex) or a list of single arguments."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ctx.fail(f"cannot split into arguments ({exc})", value) from None
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ctx.fail("expected a list of strings", value)
            out.append(str(item))
        return tuple(out)
    raise ctx.fail("expected a string or a list of strings", value)


def _env(value: Any, ctx: _Ctx) -> dict[str, str]:
    doc = _mapping(value, ctx)
    env: dict[str, str] = {}
    for name, raw in doc.items():
        sub = ctx.at(str(name))
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise sub.fail("not a valid environment variable name")
        # YAML turns `0` into an int and `yes` into a bool: accept numbers, refuse
        # bools (ambiguous: "true", "True" or "1"?) and ask for quotes.
        if isinstance(raw, bool) or raw is None or not isinstance(raw, (str, int, float)):
            raise sub.fail("expected a string (quote it in YAML)", raw)
        env[name] = str(raw)
    return env


def _forward_env(value: Any, ctx: _Ctx) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise ctx.fail("expected a list of variable names", value)
    for name in names:
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise ctx.fail("not a valid environment variable name", name)
    return tuple(names)


def _policy(value: Any, ctx: _Ctx) -> str:
    text = _string(value, ctx)
    if not text.replace("_", "").replace("-", "").isalnum():
        raise ctx.fail("expected a policy name such as cache_aware or round_robin", value)
    return text


_CHECKERS = {
    "engine": _engine,
    "model_path": _argument,
    "python": _argument,
    "env_file": _argument,
    "run_dir": _argument,
}


def _parse_role(value: Any, ctx: _Ctx) -> RoleConfig:
    doc = _mapping(value, ctx)
    _reject_unknown(doc, _ROLE_KEYS, ctx)
    values: dict[str, Any] = {}
    if doc.get("port") is not None:
        values["port"] = _port(doc["port"], ctx.at("port"))
    if "dist_init_port" in doc:
        values["dist_init_port"] = _port(doc["dist_init_port"], ctx.at("dist_init_port"))
    for key in ("tp_size", "nnodes"):
        if key in doc:
            values[key] = _positive(doc[key], ctx.at(key))
    if doc.get("extra_args") is not None:
        values["extra_args"] = _args(doc["extra_args"], ctx.at("extra_args"))
    if "env" in doc:
        values["env"] = tuple(_env(doc["env"], ctx.at("env")).items())
    return RoleConfig(**values)


def _parse_router(value: Any, ctx: _Ctx) -> RouterConfig:
    doc = _mapping(value, ctx)
    _reject_unknown(doc, _ROUTER_KEYS, ctx)
    values: dict[str, Any] = {}
    for key in ("host", "bind", "env_file"):
        if doc.get(key) is not None:
            values[key] = _argument(doc[key], ctx.at(key))
    for key in ("port", "metrics_port"):
        if key in doc:
            values[key] = _port(doc[key], ctx.at(key))
    if doc.get("policy") is not None:
        values["policy"] = _policy(doc["policy"], ctx.at("policy"))
    for key in ("launcher", "extra_args"):
        if doc.get(key) is not None:
            values[key] = _args(doc[key], ctx.at(key))
    return RouterConfig(**values)


def _role_overrides(role_cfg: RoleConfig, role: str, given: dict[str, Any], ctx: _Ctx) -> RoleConfig:
    changes: dict[str, Any] = {}
    for key, check in (("tp_size", _positive), ("nnodes", _positive), ("dist_init_port", _port)):
        for option in (key, f"{role}_{key}"):  # the role-specific option wins
            if option in given:
                changes[key] = check(given[option], ctx.at(option))
    if f"{role}_port" in given:
        changes["port"] = _port(given[f"{role}_port"], ctx.at(f"{role}_port"))
    extra = list(role_cfg.extra_args)
    for option in ("extra_args", f"{role}_extra_args"):
        if option in given:
            extra.extend(_args(given[option], ctx.at(option)))
    changes["extra_args"] = tuple(extra)
    return dataclasses.replace(role_cfg, **changes)


def _router_overrides(router: RouterConfig, given: dict[str, Any], ctx: _Ctx) -> RouterConfig:
    changes: dict[str, Any] = {}
    if "router_host" in given:
        changes["host"] = _argument(given["router_host"], ctx.at("router_host"))
    if "router_bind" in given:
        changes["bind"] = _argument(given["router_bind"], ctx.at("router_bind"))
    if "router_port" in given:
        changes["port"] = _port(given["router_port"], ctx.at("router_port"))
    if "router_metrics_port" in given:
        changes["metrics_port"] = _port(given["router_metrics_port"], ctx.at("router_metrics_port"))
    if "router_policy" in given:
        changes["policy"] = _policy(given["router_policy"], ctx.at("router_policy"))
    return dataclasses.replace(router, **changes)
