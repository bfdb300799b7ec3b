"""agent.login.container: CODEX_LOGIN_CHECK=container on the real engine and the real Codex CLI."""

from __future__ import annotations

import io
from collections.abc import Iterator

import docker
import pytest

from agent.errors import DockerUnavailableError, LoginTimeoutError, NotLoggedInError
from agent.login.container import container_login_check
from agent.settings import config as config_mod
from agent.settings.config import AgentConfig
from testkit import Images, VolumeFactory, make_api_key_login_in_volume, unique_name

pytestmark = [pytest.mark.docker, pytest.mark.codex]


def config_for(volume: str, image: str, timeout: float = 20) -> AgentConfig:
    return config_mod.load(
        {
            "CODEX_SHARD_INDEX": "0",
            "CODEX_VOLUME_NAME": volume,
            "CODEX_LOGIN_CHECK": "container",
            "CODEX_LOGIN_CHECK_IMAGE": image,
            "CODEX_LOGIN_TIMEOUT": str(timeout),
        }
    )


def leftovers(client: docker.DockerClient, volume: str) -> list[object]:
    return client.containers.list(all=True, filters={"volume": volume})


@pytest.fixture
def hanging_codex_image(docker_client: docker.DockerClient, images: Images) -> Iterator[str]:
    """An image whose `codex` never answers."""
    tag = f"codex-worker-agent/{unique_name('hang').replace('_', '-')}:test"
    dockerfile = (
        f"FROM {images.busybox}\nRUN printf '#!/bin/sh\\nexec sleep 120\\n' > /bin/codex && chmod 755 /bin/codex\n"
    )
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, labels={"cwa.test": "1"})
    yield tag
    docker_client.images.remove(tag, force=True)


class TestContainerLoginCheck:
    def test_logged_in_volume_passes(
        self, docker_client: docker.DockerClient, images: Images, volume_factory: VolumeFactory
    ) -> None:
        """A volume with a real API-key login passes, and no container is left."""
        volume = volume_factory("lc")
        make_api_key_login_in_volume(images.job, volume.name)
        config = config_for(volume.name, images.job)
        status = container_login_check(config, config.facts())
        assert status.method == "apikey"
        assert leftovers(docker_client, volume.name) == []

    def test_empty_volume_is_not_logged_in(
        self, docker_client: docker.DockerClient, images: Images, volume_factory: VolumeFactory
    ) -> None:
        """An empty volume is CODEX-E030 naming the volume."""
        volume = volume_factory("lc")
        config = config_for(volume.name, images.job)
        with pytest.raises(NotLoggedInError) as info:
            container_login_check(config, config.facts())
        assert volume.name in info.value.message
        assert leftovers(docker_client, volume.name) == []

    def test_timeout_removes_the_container(
        self, docker_client: docker.DockerClient, volume_factory: VolumeFactory, hanging_codex_image: str
    ) -> None:
        """A check that never answers is CODEX-E032 after the timeout, and its container is gone."""
        volume = volume_factory("lc")
        config = config_for(volume.name, hanging_codex_image, timeout=1.5)
        with pytest.raises(LoginTimeoutError):
            container_login_check(config, config.facts())
        assert leftovers(docker_client, volume.name) == []

    def test_unreachable_engine_is_codex_e040(self, monkeypatch: pytest.MonkeyPatch, images: Images) -> None:
        """No engine behind DOCKER_HOST: CODEX-E040, not a login error."""
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        config = config_for("codex_auth_0", images.job)
        with pytest.raises(DockerUnavailableError) as info:
            container_login_check(config, config.facts())
        assert info.value.code == "CODEX-E040"
