import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: the network tests' tensors are tiny, and on a busy 2-core machine two threads
    contend so much that a step takes several times longer than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
