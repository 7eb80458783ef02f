"""The agent's kubeconfig reading (``agent/kubeconfig.py``): what it needs, as kubectl reads it,
and a clear refusal for what it cannot use."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from workflowplane.agent.kubeconfig import KubeConfigError, KubeTarget


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_current_context_with_files_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = _write(
        tmp_path / "config",
        """
clusters:
- {name: c, cluster: {server: "https://plane:6443", certificate-authority: pki/ca.crt}}
- {name: other, cluster: {server: "https://elsewhere"}}
users:
- {name: u, user: {client-certificate: pki/u.crt, client-key: pki/u.key, tokenFile: tok}}
contexts:
- {name: x, context: {cluster: c, user: u}}
- {name: y, context: {cluster: other}}
current-context: x
""",
    )
    target = KubeTarget.from_file(kubeconfig)
    assert target.server == "https://plane:6443"
    assert target.ca_file == tmp_path.resolve() / "pki/ca.crt"
    assert target.client_cert_file == tmp_path.resolve() / "pki/u.crt"
    assert target.client_key_file == tmp_path.resolve() / "pki/u.key"
    assert target.token_file == tmp_path.resolve() / "tok"
    other = KubeTarget.from_file(kubeconfig, "y")
    assert other.server == "https://elsewhere" and other.token is None


def test_inline_data_is_decoded(tmp_path: Path) -> None:
    ca = base64.b64encode(b"CA PEM").decode()
    kubeconfig = _write(
        tmp_path / "config",
        f"""
clusters: [{{name: c, cluster: {{server: "https://p", certificate-authority-data: {ca},
  insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: secret}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""",
    )
    target = KubeTarget.from_file(kubeconfig)
    assert target.ca_data == b"CA PEM" and target.insecure and target.token == "secret"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("clusters: []\ncontexts: []\n", "no current-context"),
        ("current-context: gone\ncontexts: []\n", "no context named 'gone'"),
        (
            "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
            "clusters: [{name: c, cluster: {server: 'https://p'}}]\n"
            "users: [{name: u, user: {exec: {command: aws}}}]\n",
            "exec/auth-provider",
        ),
        (
            "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
            "clusters: [{name: c, cluster: {}}]\n",
            "has no server",
        ),
        ("- a list\n", "not a YAML mapping"),
    ],
    ids=["no-current", "unknown-context", "exec-plugin", "no-server", "not-a-mapping"],
)
def test_what_cannot_be_used_is_named(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(KubeConfigError, match=said):
        KubeTarget.from_file(_write(tmp_path / "config", text))


def test_the_service_account_in_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match="not in a pod"):
        KubeTarget.from_service_account(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError, match="no service account token"):
        KubeTarget.from_service_account(tmp_path)
    _write(tmp_path / "token", "t")
    target = KubeTarget.from_service_account(tmp_path)
    assert target.server == "https://[fd00::1]:443"
    assert target.token_file == tmp_path / "token" and target.ca_file == tmp_path / "ca.crt"
