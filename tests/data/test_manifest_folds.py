"""Cross-validation folds of a manifest: the ``fold`` column when present, else a seeded split of
the train/val pool (deterministic, disjoint, covering the pool, every fold non-empty)."""

from __future__ import annotations

import pytest

from unet_med.data.manifest import ManifestError, fold_assignment, manifest_datalist


def _manifest(path, rows: list[tuple[str, str, str]], *, header: str = "subject_id,image,label,split,fold"):
    """rows: (subject_id, split, fold) — fold left out when the header has no fold column."""
    lines = [header]
    for subject, split, fold in rows:
        cells = [subject, f"img/{subject}.nii.gz", f"lab/{subject}.nii.gz", split]
        lines.append(",".join([*cells, fold] if header.endswith("fold") else cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def _ids(items) -> list[str]:
    return [d["subject_id"] for d in items]


@pytest.fixture
def no_fold_csv(tmp_path):
    # 11 pool subjects in shuffled order (train and val split rows both join the pool) and 2 test rows
    rows = [(f"s{i:02d}", "val" if i % 4 == 0 else "train", "") for i in (7, 3, 10, 0, 5, 1, 9, 2, 8, 4, 6)]
    rows += [("t0", "test", ""), ("t1", "test", "")]
    return _manifest(tmp_path / "m.csv", rows, header="subject_id,image,label,split")


def test_seeded_folds_are_deterministic_disjoint_and_cover_the_pool(no_fold_csv):
    pool = {f"s{i:02d}" for i in range(11)}
    assignment = fold_assignment(no_fold_csv, 5, 0)
    assert set(assignment) == pool
    assert assignment == fold_assignment(no_fold_csv, 5, 0)  # same seed, same folds
    sizes = sorted(list(assignment.values()).count(k) for k in range(5))
    assert sizes == [2, 2, 2, 2, 3]  # every fold non-empty, sizes differ by at most one
    assert fold_assignment(no_fold_csv, 5, 1) != assignment  # the seed matters

    vals = []
    for k in range(5):
        val = _ids(manifest_datalist(no_fold_csv, "val", fold=k, num_folds=5, seed=0))
        train = _ids(manifest_datalist(no_fold_csv, "train", fold=k, num_folds=5, seed=0))
        assert val and set(val) == {s for s, f in assignment.items() if f == k}
        assert set(train) == pool - set(val)  # train is the rest of the pool
        assert _ids(manifest_datalist(no_fold_csv, "test", fold=k)) == ["t0", "t1"]  # test unchanged
        vals += val
    assert sorted(vals) == sorted(pool)  # the val folds partition the pool


def test_seeded_split_depends_on_subjects_not_row_order(no_fold_csv, tmp_path):
    lines = no_fold_csv.read_text().splitlines()
    reordered = tmp_path / "reordered.csv"
    reordered.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert fold_assignment(reordered, 3, 7) == fold_assignment(no_fold_csv, 3, 7)


def test_fold_none_keeps_the_split_column(no_fold_csv):
    assert _ids(manifest_datalist(no_fold_csv, "val")) == ["s00", "s08", "s04"]
    assert _ids(manifest_datalist(no_fold_csv, "val", fold=None, num_folds=99)) == ["s00", "s08", "s04"]


def test_fold_column_is_respected(tmp_path):
    csv = _manifest(
        tmp_path / "m.csv",
        [("a", "train", "0"), ("b", "val", "1"), ("c", "train", "2"), ("d", "train", "1"), ("e", "test", "")],
    )
    assert fold_assignment(csv, 3) == {"a": 0, "b": 1, "c": 2, "d": 1}
    assert _ids(manifest_datalist(csv, "val", fold=1, num_folds=3)) == ["b", "d"]
    assert _ids(manifest_datalist(csv, "train", fold=1, num_folds=3)) == ["a", "c"]
    assert _ids(manifest_datalist(csv, ["val", "test"], fold=2, num_folds=3)) == ["c", "e"]
    # a fold column left empty on every pool row means: no folds given, split them by seed
    empty = _manifest(tmp_path / "empty.csv", [(s, "train", "") for s in "abcd"])
    assert sorted(fold_assignment(empty, 2).values()) == [0, 0, 1, 1]


def test_bad_fold_index_and_unsplittable_pools_are_named(no_fold_csv, tmp_path):
    with pytest.raises(ManifestError, match=r"m.csv: fold must be an integer in 0..4 \(num_folds=5\), got 5"):
        manifest_datalist(no_fold_csv, "train", fold=5)
    with pytest.raises(ManifestError, match="got -1"):
        manifest_datalist(no_fold_csv, "train", fold=-1, num_folds=3)
    with pytest.raises(ManifestError, match="num_folds must be an integer >= 2, got 1"):
        manifest_datalist(no_fold_csv, "train", fold=0, num_folds=1)
    with pytest.raises(
        ManifestError, match=r"m.csv: cannot split a training pool of 11 subject\(s\).* into 12"
    ):
        manifest_datalist(no_fold_csv, "val", fold=0, num_folds=12)

    partial = _manifest(
        tmp_path / "partial.csv", [("a", "train", "0"), ("b", "train", ""), ("c", "val", "1")]
    )
    with pytest.raises(
        ManifestError, match=r"partial.csv: the 'fold' column is empty on 1 train/val row.*2 \(b\)"
    ):
        manifest_datalist(partial, "train", fold=0)
    beyond = _manifest(tmp_path / "beyond.csv", [("a", "train", "0"), ("b", "train", "7")])
    with pytest.raises(ManifestError, match=r"beyond.csv: row 2 \(b\): fold '7' is not an integer in 0..4"):
        manifest_datalist(beyond, "train", fold=0)
    missing = _manifest(tmp_path / "missing.csv", [("a", "train", "0"), ("b", "train", "1")])
    with pytest.raises(ManifestError, match=r"missing.csv: fold 3 has no train/val rows .*\[0, 1\]"):
        manifest_datalist(missing, "val", fold=3)
    leaking = _manifest(tmp_path / "leak.csv", [("a", "train", "0"), ("a", "train", "1"), ("b", "val", "1")])
    with pytest.raises(
        ManifestError, match="leak.csv: subject.* a have train/val rows in more than one fold"
    ):
        fold_assignment(leaking, 2)
