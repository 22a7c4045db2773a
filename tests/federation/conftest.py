import os

import pytest

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

# Small, fast problems for the unit tests (d=10, r=2, k=1).
SMALL = {"dim": 10, "rank": 2, "sparsity": 1, "data-examples": 12, "num-server-rounds": 3, "starts": 2,
         "wait-for-nodes": 0.0, "personalize-at-end": False}


@pytest.fixture
def small() -> dict:
    return dict(SMALL)


@pytest.fixture(autouse=True)
def task_identity():
    """What a SuperLink sets in the ServerApp's process before messages can be created."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
