"""roles.yaml `serving:` parsing: defaults, validation messages naming file and key, overrides."""

from __future__ import annotations

import pytest
import yaml

from cluster.errors import InputError, InventoryError, ParameterError
from cluster.serving.config import (
    DECODE,
    PREFILL,
    RoleConfig,
    RouterConfig,
    ServingConfig,
    parse_serving,
)
from cluster_cli.common import flag_of

FULL = """
serving:
  engine: sglang
  model_path: deepseek-ai/DeepSeek-V3
  python: /opt/venv/bin/python3
  env_file: /opt/deepep/unified-env.sh
  env:
    NCCL_SOCKET_IFNAME: bond0
    GLOO_SOCKET_IFNAME: bond0
    CUDA_VISIBLE_DEVICES: 0
  forward_env: [HF_TOKEN]
  run_dir: /scratch/run
  bootstrap_port: 9000
  prefill:
    port: 31000
    tp_size: 16
    nnodes: 2
    dist_init_port: 5100
    extra_args: "--trust-remote-code --mem-fraction-static 0.8"
  decode:
    tp_size: 8
    extra_args: ["--max-running-requests", 128]
    env: {CUDA_VISIBLE_DEVICES: "4,5,6,7"}
  router:
    host: local
    port: 8080
    policy: round_robin
"""


def load(text: str) -> ServingConfig:
    return parse_serving(yaml.safe_load(text)["serving"], source="roles.yaml")


def test_defaults_when_section_missing():
    config = parse_serving(None, source="roles.yaml")
    assert config.engine == "sglang"
    assert config.python == "python3"
    assert config.run_dir == "~/.cluster/run"
    assert config.bootstrap_port == 8998
    assert config.port(PREFILL) == 30000 and config.port(DECODE) == 30001
    assert config.router.host is None  # no router unless asked


def test_full_section_parses_every_key():
    config = load(FULL)
    assert config.model_path == "deepseek-ai/DeepSeek-V3"
    assert config.python == "/opt/venv/bin/python3"
    assert config.env_file == "/opt/deepep/unified-env.sh"
    # YAML made CUDA_VISIBLE_DEVICES an int; the env value must be the string "0".
    assert dict(config.env) == {"NCCL_SOCKET_IFNAME": "bond0", "GLOO_SOCKET_IFNAME": "bond0",
                                "CUDA_VISIBLE_DEVICES": "0"}
    assert config.forward_env == ("HF_TOKEN",)
    assert config.run_dir == "/scratch/run"
    assert config.bootstrap_port == 9000
    assert config.prefill == RoleConfig(port=31000, tp_size=16, nnodes=2, dist_init_port=5100,
                                        extra_args=("--trust-remote-code", "--mem-fraction-static", "0.8"))
    assert config.decode.extra_args == ("--max-running-requests", "128")
    assert dict(config.decode.env) == {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert config.port(DECODE) == 30001  # not set: engine default
    assert config.router == RouterConfig(host="local", port=8080, policy="round_robin")
    assert config.router.metrics_port == 29000


def test_vllm_default_ports_follow_engine():
    config = parse_serving({"engine": "vllm"}, source="roles.yaml")
    assert (config.port(PREFILL), config.port(DECODE)) == (8100, 8200)
    assert config.side_channel_port == 5600


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"prefill": {"port": "abc"}},
         "roles.yaml: serving.prefill.port: expected an integer 1-65535, got 'abc'"),
        ({"prefill": {"port": 70000}},
         "roles.yaml: serving.prefill.port: expected an integer 1-65535, got 70000"),
        ({"decode": {"port": True}},
         "roles.yaml: serving.decode.port: expected an integer 1-65535, got True"),
        ({"engine": "trt"}, "roles.yaml: serving.engine: expected one of sglang, vllm, got 'trt'"),
        ({"prefill": {"tp_size": 0}},
         "roles.yaml: serving.prefill.tp_size: expected a positive integer, got 0"),
        ({"decode": {"nnodes": -2}},
         "roles.yaml: serving.decode.nnodes: expected a positive integer, got -2"),
        ({"bootstrap_port": "x"},
         "roles.yaml: serving.bootstrap_port: expected an integer 1-65535, got 'x'"),
        ({"env": {"BAD-NAME": "x"}},
         "roles.yaml: serving.env.BAD-NAME: not a valid environment variable name"),
        ({"env": {"FLAG": True}},
         "roles.yaml: serving.env.FLAG: expected a string (quote it in YAML), got True"),
        ({"env": ["A=1"]}, "roles.yaml: serving.env: expected a mapping, got ['A=1']"),
        ({"prefill": {"extra_args": "--x 'unclosed"}},
         "roles.yaml: serving.prefill.extra_args: cannot split into arguments"),
        ({"prefill": {"extra_args": {"a": 1}}},
         "roles.yaml: serving.prefill.extra_args: expected a string or a list of strings"),
        ({"router": {"policy": "cache aware; rm -rf"}},
         "roles.yaml: serving.router.policy: expected a policy name"),
        ({"model_path": ""}, "roles.yaml: serving.model_path: expected a non-empty string, got ''"),
        ({"prefill": "30000"}, "roles.yaml: serving.prefill: expected a mapping, got '30000'"),
    ],
)
def test_bad_values_name_file_key_and_value(doc, message):
    with pytest.raises(InventoryError) as info:
        parse_serving(doc, source="roles.yaml")
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"modle_path": "x"}, "roles.yaml: serving.modle_path: unknown key"),
        ({"prefill": {"tp": 8}}, "roles.yaml: serving.prefill.tp: unknown key"),
        ({"router": {"adress": "x"}}, "roles.yaml: serving.router.adress: unknown key"),
    ],
)
def test_unknown_keys_are_named(doc, key):
    with pytest.raises(InventoryError) as info:
        parse_serving(doc, source="roles.yaml")
    assert str(info.value).startswith(key)
    assert "expected one of" in str(info.value)


def test_source_name_is_the_file_given():
    with pytest.raises(InventoryError, match=r"^/etc/cluster/prod\.yaml: serving\.engine"):
        parse_serving({"engine": 3}, source="/etc/cluster/prod.yaml")


def test_extra_args_string_is_split_like_a_shell():
    config = parse_serving({"prefill": {"extra_args": "--chat-template 'my template.jinja' --x=\"a b\""}},
                           source="r.yaml")
    assert config.prefill.extra_args == ("--chat-template", "my template.jinja", "--x=a b")


def test_overrides_none_means_not_given():
    config = load(FULL)
    assert config.with_overrides(model_path=None, prefill_port=None, env=None) == config


def test_overrides_apply_and_validate():
    config = load(FULL).with_overrides(
        engine="vllm", model_path="Qwen/Qwen3-8B", tp_size=4, decode_tp_size=2, prefill_port="32000",
        env={"NCCL_SOCKET_IFNAME": "eth1", "HF_TOKEN": "t"}, extra_args="--seed 1",
        router_host="10.8.0.90", router_port=9000, router_metrics_port=29100,
    )
    assert config.engine == "vllm"
    assert config.model_path == "Qwen/Qwen3-8B"
    assert config.prefill.tp_size == 4 and config.decode.tp_size == 2  # role-specific wins
    assert config.port(PREFILL) == 32000
    assert config.port(DECODE) == 8200  # engine changed, decode port was a default
    env = dict(config.env)
    assert env["NCCL_SOCKET_IFNAME"] == "eth1" and env["GLOO_SOCKET_IFNAME"] == "bond0"
    assert config.prefill.extra_args[-2:] == ("--seed", "1")
    assert config.prefill.extra_args[0] == "--trust-remote-code"  # file's args kept, CLI's after
    router = config.router
    assert (router.host, router.port, router.policy) == ("10.8.0.90", 9000, "round_robin")
    assert config.router.metrics_port == 29100


def test_override_errors_name_the_parameter_and_the_cli_maps_it_to_the_option():
    config = load(FULL)
    with pytest.raises(ParameterError, match=r"^prefill_port: expected an integer 1-65535, got 'http'") as info:
        config.with_overrides(prefill_port="http")
    assert flag_of(info.value.parameter, {}) == "--prefill-port"
    assert info.value.naming("--prefill-port") == "--prefill-port: expected an integer 1-65535, got 'http'"
    with pytest.raises(ParameterError, match="^engine: expected one of sglang, vllm") as info:
        config.with_overrides(engine="tgi")
    assert info.value.naming("--engine").startswith("--engine: expected one of sglang, vllm")
    with pytest.raises(InputError, match="unknown serving override"):
        config.with_overrides(prefil_port=1)


def test_override_errors_are_not_inventory_errors():
    # CLI mistakes are InputError (exit 2) but must not blame the roles file.
    with pytest.raises(InputError) as info:
        ServingConfig().with_overrides(tp_size="many")
    assert not isinstance(info.value, InventoryError)


def test_role_lookup_rejects_unknown_role():
    with pytest.raises(InputError, match="unknown serving role 'encode'"):
        ServingConfig().role("encode")


@pytest.mark.parametrize("key", ["model_path", "python", "env_file", "run_dir"])
def test_values_that_would_be_read_as_options_are_refused(key):
    # `vllm serve -x` or `mkdir -p -x` would take the value for an option.
    with pytest.raises(InventoryError, match=f"roles.yaml: serving.{key}: may not start with '-'"):
        parse_serving({key: "--trust-remote-code"}, source="roles.yaml")
    with pytest.raises(ParameterError, match=f"^{key}: may not start with '-'"):
        ServingConfig().with_overrides(**{key: "-x"})
    with pytest.raises(InventoryError, match="serving.router.host: may not start with '-'"):
        parse_serving({"router": {"host": "-oProxyCommand=x"}}, source="roles.yaml")
