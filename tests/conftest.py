"""Fixtures shared by several test files: a real redis-server and a real local Ray cluster."""
import pytest
import ray

from orchestrator.redis_server import EmbeddedRedis, connect


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real redis-compatible server (valkey, from pip) on 127.0.0.1, stopped after the module."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = connect(server.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster for one test module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
