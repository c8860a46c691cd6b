"""--ckpt.max_num / --ckpt.max_mem: oldest checkpoints go first, the newest always stays."""

import os

from quartet.engines.checkpoint_rotation import GB, prune_checkpoints


def _ckpts(root, sizes):
    for i, size in enumerate(sizes):
        d = root / f"step{i}"
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "weights.bin").write_bytes(b"x" * size)
        os.utime(d, (1000 + i, 1000 + i))  # mtime orders them: step0 oldest


def test_max_num_keeps_the_newest(tmp_path):
    _ckpts(tmp_path, [10, 10, 10, 10])
    deleted = prune_checkpoints(tmp_path, max_num=2)
    assert [d.name for d in deleted] == ["step0", "step1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step2", "step3"]


def test_max_mem_prunes_by_total_size(tmp_path):
    _ckpts(tmp_path, [400, 300, 200, 100])  # 1000 bytes in total
    limit_gb = 350 / GB  # 350 bytes: only step2 + step3 (300) fit
    deleted = prune_checkpoints(tmp_path, max_mem_gb=limit_gb)
    assert [d.name for d in deleted] == ["step0", "step1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step2", "step3"]


def test_newest_stays_even_when_too_big_and_no_limits_delete_nothing(tmp_path):
    _ckpts(tmp_path, [500, 500])
    prune_checkpoints(tmp_path, max_mem_gb=100 / GB)
    assert [p.name for p in tmp_path.iterdir()] == ["step1"]
    assert prune_checkpoints(tmp_path) == []
    assert prune_checkpoints(tmp_path / "missing", max_num=1) == []
