"""The pickled DataKeyProvider loads in a dynamic provider process started the way the Pulumi engine starts it.

How the engine starts it (pulumi/pulumi, master, read for this test):
- ``sdk/go/common/resource/plugin/provider_plugin.go`` ``NewProvider``: the runtime options of
  ``Pulumi.yaml`` become ``PULUMI_RUNTIME_<OPTION>`` variables (``virtualenv: venv`` ->
  ``PULUMI_RUNTIME_VIRTUALENV=venv``), ``PULUMI_PROJECT`` is set, the rest of the environment is the
  CLI's own; the plugin is started by ``newPlugin(ctx, ctx.Pwd, path, ...)``.
- ``sdk/go/common/resource/plugin/plugin.go`` ``execPlugin``: ``cmd.Dir = pwd``, so its working
  directory is the plugin context's ``Pwd``: the project directory (``pkg/engine/project.go``
  ``getPwdMain``: the directory of ``Pulumi.yaml``, or ``main`` when that names a subdirectory).
- ``sdk/python/dist/pulumi-resource-pulumi-python``: makes the virtualenv path absolute against
  ``$PWD``, puts its ``bin`` first on ``PATH``, unsets ``PYTHONHOME`` and runs
  ``$VENV/bin/python -u -m pulumi.dynamic <engine address>``.
- ``sdk/python/lib/pulumi/dynamic/__main__.py``: prints its gRPC port, and on ``Check``/``Create``/
  ``Read``/``Diff``/``Update``/``Delete`` unpickles ``__provider`` with ``dill.loads``.
- ``sdk/python/toolchain/pip.go`` ``InstallDependencies``: the virtualenv is made with
  ``python -m venv`` and filled by ``python -m pip install -r requirements.txt`` run in the project
  directory (so ``-e .`` there means this checkout).

With ``python -m``, Python puts the working directory first on ``sys.path`` unless
``PYTHONSAFEPATH`` is set; the project directory alone would then carry the import, and
nothing else would. The ``-e .`` line in ``requirements.txt`` installs ``components`` into the
virtualenv, so the import holds wherever the process starts and with ``PYTHONSAFEPATH`` set.
Each test here starts a real ``pulumi.dynamic`` process and sends it a real ``Check``.
"""

from __future__ import annotations

import os
import pickletools
import site
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pulumi.dynamic.dynamic as pulumi_dynamic
import pytest
import yaml
from google.protobuf import struct_pb2
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from components.data_key_provider import DataKeyProvider

REPO = Path(__file__).resolve().parents[2]
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
URN = "urn:pulumi:dev::mariadb-kms::mariadb-kms:index:ClusterDataKey$pulumi-python:dynamic:Resource::cluster-data-key"


# --------------------------------------------------------------------------
# virtualenvs shaped like the one Pulumi makes
# --------------------------------------------------------------------------


def _make_venv(path: Path) -> Path:
    """A fresh virtualenv whose third-party packages are this test run's (no network, no copy).

    A plain path line in a .pth file adds the directory without running that directory's own .pth
    files, so an editable install of ``components`` in the test run's environment does not leak in.
    """
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(path)], check=True)  # type: ignore[attr-defined]
    (site_dir,) = path.glob("lib/python3*/site-packages")
    (site_dir / "test-run-packages.pth").write_text("".join(f"{d}\n" for d in site.getsitepackages()))
    return path


def _local_requirements(requirements: Path) -> list[list[str]]:
    """The lines of requirements.txt that install something from this checkout, as pip arguments."""
    found = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        parts = line.split()
        if parts[:1] == ["-e"] and len(parts) == 2 and parts[1].startswith("."):
            found.append(parts)
        elif parts and parts[0].startswith("."):
            found.append(parts)
    return found


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_venv(tmp_path_factory.mktemp("bare") / "venv")


@pytest.fixture(scope="module")
def project_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtualenv after ``pip install -r requirements.txt`` (its local lines; the pinned ones are shared)."""
    venv = _make_venv(tmp_path_factory.mktemp("project") / "venv")
    local = _local_requirements(REPO / "requirements.txt")
    assert local, "requirements.txt installs nothing from this checkout"
    for args in local:
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
             "--no-deps", "--no-index", "--no-build-isolation", *args],
            cwd=REPO, check=True,
        )
    return venv


# --------------------------------------------------------------------------
# the provider process, as the engine starts it
# --------------------------------------------------------------------------


def _engine_env(venv: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSAFEPATH")}
    env.update({
        "PULUMI_RUNTIME_TOOLCHAIN": "pip",
        "PULUMI_RUNTIME_VIRTUALENV": str(venv),
        "PULUMI_PROJECT": "mariadb-kms",
        "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}",
    })
    env.update(extra)
    return env


def _check(venv: Path, cwd: Path, news: Mapping[str, Any], extra_env: Mapping[str, str] | None = None) -> Any:
    """Start ``python -u -m pulumi.dynamic`` in ``cwd`` and send it one Check; the response, or the gRPC error."""
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), "-u", "-m", "pulumi.dynamic", "127.0.0.1:1"],
        cwd=cwd, env=_engine_env(venv, extra_env or {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().decode().strip()
        assert port.isdigit(), f"no port from pulumi.dynamic: {proc.communicate(timeout=10)}"
        request = provider_pb2.CheckRequest(urn=URN, olds=struct_pb2.Struct(), news=_struct(news))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            try:
                return stub.Check(request, timeout=60)
            except grpc.RpcError as error:
                return error
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


def _news(provider: Any) -> dict[str, Any]:
    return {
        "__provider": pulumi_dynamic.serialize_provider(provider),
        "key_arn": KEY_ARN,
        "escrow_in_ssm": False,
        "tags": {"project": "mariadb-kms"},
    }


def _accepted(response: Any) -> bool:
    return isinstance(response, provider_pb2.CheckResponse) and not response.failures


def _import_error(response: Any) -> str:
    assert isinstance(response, grpc.RpcError), f"expected the provider process to fail, got {response}"
    return str(response.details())  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------


def test_the_pickle_names_the_provider_by_its_stable_path() -> None:
    import base64

    data = base64.b64decode(_news(DataKeyProvider())["__provider"])
    strings = [str(arg) for op, arg, _ in pickletools.genops(data) if op.name.endswith("UNICODE")]
    assert "components.data_key_provider" in strings and "DataKeyProvider" in strings


def test_the_engine_started_process_loads_the_provider(project_venv: Path) -> None:
    response = _check(project_venv, REPO, _news(DataKeyProvider()))
    assert _accepted(response), response
    assert response.inputs.fields["key_arn"].string_value == KEY_ARN


def test_the_install_carries_the_import_without_the_project_directory(project_venv: Path, tmp_path: Path) -> None:
    # Another working directory (an Automation API program, `main:` elsewhere) and PYTHONSAFEPATH,
    # which keeps the working directory off sys.path: only the installed package is left.
    response = _check(project_venv, tmp_path, _news(DataKeyProvider()), {"PYTHONSAFEPATH": "1"})
    assert _accepted(response), response


def test_control_without_the_install_the_same_process_cannot_load_it(bare_venv: Path, tmp_path: Path) -> None:
    message = _import_error(_check(bare_venv, tmp_path, _news(DataKeyProvider()), {"PYTHONSAFEPATH": "1"}))
    assert "No module named 'components'" in message


@pytest.fixture
def outside_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A provider class in a module importable only through a sys.path entry of this test process."""
    name = f"outside_provider_{uuid.uuid4().hex[:8]}"
    where = tmp_path / "only-here"
    where.mkdir()
    (where / f"{name}.py").write_text(textwrap.dedent("""
        import pulumi.dynamic

        class OutsideProvider(pulumi.dynamic.ResourceProvider):
            def check(self, _olds, news):
                return pulumi.dynamic.CheckResult(news, [])
    """))
    monkeypatch.syspath_prepend(str(where))
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


def test_control_a_provider_importable_only_here_fails_in_the_engine_started_process(
    project_venv: Path, outside_module: Any
) -> None:
    provider = outside_module.OutsideProvider()
    assert outside_module.OutsideProvider().check({}, {"a": 1}).inputs == {"a": 1}  # it works in this process
    message = _import_error(_check(project_venv, REPO, _news(provider)))
    assert f"No module named '{outside_module.__name__}'" in message


def test_the_virtualenv_pulumi_creates_is_git_ignored() -> None:
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    venv = project["runtime"]["options"]["virtualenv"]
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{venv}/bin/python"], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"{venv}/ (Pulumi.yaml runtime.options.virtualenv) is not in .gitignore"
    control = subprocess.run(["git", "check-ignore", "-q", "--no-index", "components/config.py"], cwd=REPO, check=False)
    assert control.returncode == 1
