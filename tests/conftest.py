import os

# Tests must never reach a model hub: every model comes from a local folder or a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# The slowest test files first (measured: each runs whole Snakemake workflows, a SLURM cluster or the
# vLLM engine for minutes). `make test` hands test files to two pytest-xdist workers in collection
# order (--dist loadfile); started last, these would leave one worker idle while the other finishes
# them. A stable sort: the order of the tests within a file is kept (some continue a scenario).
SLOW_FIRST = [
    "test_slurm.py", "test_default_config.py", "test_fault_injection.py", "test_vllm_backends.py",
    "test_baselines.py", "test_workflow.py", "test_captioning_kill_resume.py", "test_captioning_workflow.py",
    "test_embedding_workflow.py", "test_bad_images_workflow.py", "test_captioning_reuse.py",
    "test_fusion_workflow.py", "test_api_encoder_vllm.py", "test_search.py", "test_real_inputs_workflow.py",
    "test_user_experiment.py",
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
