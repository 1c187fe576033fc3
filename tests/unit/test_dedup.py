"""MinHash, LSH buckets, verified and transitive duplicate finding over integer keys, decontamination, and
diversity selection."""

import json

import numpy as np
import pyarrow as pa
import pytest

from pipelines.curate.decontaminate import (
    ContaminationFilter,
    EvalIndex,
    build_eval_index,
    eval_item_words,
    is_contaminated,
)
from pipelines.curate.dedup import (
    DedupSpec,
    band_keys,
    dedup_keys,
    exact_key,
    find_duplicates,
    jaccard,
    keeper_order,
    lsh_bands,
    minhash_signatures,
    shingles,
)
from pipelines.curate.reasons import CONTAMINATED, EXACT_DUPLICATE, NEAR_DUPLICATE
from pipelines.curate.select import farthest_point_ids


def chat(question, answer, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_exact_key_ignores_case_and_spacing_but_not_roles():
    assert exact_key(chat("What is 3 + 4?", "7")) == exact_key(chat("what  is 3 + 4?", "7 "))
    assert exact_key(chat("What is 3 + 4?", "7")) != exact_key(chat("What is 3 + 4?", "8"))


def test_shingles():
    assert shingles(chat("a b", "c"), 3) == ["a b c"]
    assert shingles(chat("a b c", "d"), 3) == ["a b c", "b c d"]


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    base = [f"w{i}" for i in rng.integers(0, 10_000, 200)]
    close = base[:180] + [f"x{i}" for i in range(20)]
    far = [f"y{i}" for i in range(200)]
    sigs = minhash_signatures([base, close, far], 256)
    estimate = (sigs[0] == sigs[1]).mean()
    assert estimate == pytest.approx(jaccard(base, close), abs=0.08)
    assert (sigs[0] == sigs[2]).mean() < 0.05


def test_band_keys_collide_for_equal_signatures_only_per_band():
    sigs = minhash_signatures([["a b c"], ["a b c"], ["d e f"]], 128)
    keys = band_keys(sigs, *lsh_bands(0.7, 128))
    assert (keys[0] == keys[1]).all() and not (keys[0] == keys[2]).any()
    assert len(set(keys[0])) == keys.shape[1]  # band index is salted in: bands never share a key


def test_lsh_is_tuned_to_miss_few_pairs_at_the_threshold():
    bands, rows = lsh_bands(0.7, 128)
    assert 1 - (1 - 0.75 ** rows) ** bands > 0.95


def _duplicates(conversations, spec, user_ids=None):
    """Duplicates among ``conversations`` (internal key -> messages) as curation finds them: keys from the read
    pass, rows in keeper order (``user_ids``: key -> the user's id), clusters from the integer keys alone."""
    user_ids = user_ids or {}
    ids = list(conversations)
    order = keeper_order(pa.array([user_ids.get(k) for k in ids], pa.string()), pa.array(ids))
    ordered = [ids[i] for i in order]
    keys = dedup_keys([conversations[k] for k in ordered], spec).to_pylist()
    asked = []

    def shingle_sets(positions):
        asked.extend(positions.tolist())
        return {p: set(shingles(conversations[ordered[p]], spec.shingle_words)) for p in positions.tolist()}

    found = find_duplicates(np.array(keys, dtype=np.int64), spec, shingle_sets)
    assert len(set(asked)) == len(asked)  # each candidate's text is read once
    return {ordered[row]: (reason, f"duplicate of {ordered[keeper]}")
            for row, keeper, reason in zip(found.rows.tolist(), found.keepers.tolist(), found.reasons(), strict=True)}


def test_find_duplicates_keeps_the_smallest_id():
    system = "You are a precise assistant. Answer with the result only."
    long_row = chat("What is 4 + 7? Then tell me what comes after 12 and sort 3 1 2.", "11, 13 and 1 2 3",
                    system)
    near = [dict(m) for m in long_row]
    near[1]["content"] += " Thanks!"
    conversations = {
        "a": long_row, "c": long_row, "b": near,  # b is near to a, c is an exact copy of a
        "d": chat("What is 3 + 4?", "7"), "e": chat("What is 3 + 5?", "8"),  # siblings, not duplicates
        "f": chat("What is 3 + 4?", "7"),
    }
    assert _duplicates(conversations, DedupSpec(threshold=0.7)) == {
        "b": (NEAR_DUPLICATE, "duplicate of a"), "c": (EXACT_DUPLICATE, "duplicate of a"),
        "f": (EXACT_DUPLICATE, "duplicate of d")}


def test_exact_only():
    conversations = {"x": chat("What is 3 + 4?", "7"), "w": chat("what is 3 + 4?", "7")}
    assert _duplicates(conversations, DedupSpec(threshold=None)) == {
        "x": (EXACT_DUPLICATE, "duplicate of w")}


def test_rows_are_told_apart_by_their_keys_and_the_smallest_user_id_is_kept():
    """Issue 11: identical lines without an id used to share one content id, and neither was marked; rows that
    share a user id are not duplicates unless their text is."""
    conversations = {"a:1": chat("What is 3 + 4?", "7"), "a:2": chat("What is 3 + 4?", "7"),
                     "b:1": chat("What is 3 + 4?", "7"),  # the same id-less line twice in a, once in b
                     "c:1": chat("What is 8 + 1?", "9"), "d:1": chat("Sort 5 2 8.", "2 5 8"),
                     "d:2": chat("What is 8 + 1?", "9")}
    user_ids = {"c:1": "1", "d:1": "1", "d:2": "0"}  # both sources number their rows
    assert _duplicates(conversations, DedupSpec(threshold=0.7), user_ids) == {
        "a:2": (EXACT_DUPLICATE, "duplicate of a:1"), "b:1": (EXACT_DUPLICATE, "duplicate of a:1"),
        "c:1": (EXACT_DUPLICATE, "duplicate of d:2")}


def test_short_eval_items_match_whole_long_ones_by_ngram(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in [
        chat("Sort 2 5 7.", "2 5 7"),
        chat("Tell me the full story of the river that runs through the valley of Kalo", "It is long."),
    ]) + "\n")
    index = build_eval_index([str(path)], 8)
    assert len(index.short_items[7]) == 1 and index.ngrams
    assert is_contaminated(chat("Please help. Sort 2 5 7.", "2 5 7"), index)
    assert not is_contaminated(chat("Sort 2 5 7.", "2 5 8"), index)
    assert not is_contaminated(chat("Sort 2 5 9.", "2 5 9"), index)
    assert is_contaminated(chat("So, the river that runs through the valley of Kalo?", "Yes"), index)
    assert not is_contaminated(chat("What is the river of Kalo?", "Ven"), index)
    assert ContaminationFilter(index)(chat("Please help. Sort 2 5 7.", "2 5 7")) == (False, CONTAMINATED)


def test_eval_words_skip_the_system_turn():
    assert eval_item_words(chat("What is 3 + 4?", "7", system="Be brief.")) == ["what", "is", "3", "4", "7"]
    assert len(EvalIndex(8)) == 0


def test_farthest_point_selection_spreads_out():
    vectors = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert farthest_point_ids(["a", "b", "c", "d"], vectors, 3) == ["a", "d", "c"]


def test_dedup_keys_exact_first_then_one_per_band_and_none_for_dropped_rows():
    spec = DedupSpec(threshold=0.7)
    keys = dedup_keys([chat("a b c", "d"), None, chat("a b c", "d")], spec).to_pylist()
    assert len(keys[0]) == 1 + lsh_bands(0.7, 128)[0] and keys[1] == [] and keys[0] == keys[2]
    assert keys[0][0] == exact_key(chat("a b c", "d"))
    assert dedup_keys([chat("a", "b")], DedupSpec(threshold=None)).to_pylist() == [[exact_key(chat("a", "b"))]]


def _words(count, start=0):
    return " ".join(f"w{i}" for i in range(start, start + count))


def test_near_duplicate_clusters_are_transitive_and_keep_their_first_row():
    """a~b and b~c, a and c not close: one cluster, one row kept (a chain the star to a alone would miss)."""
    a = chat(_words(40), "done")
    b = chat(_words(40, 4), "done")  # 36 of 40 words shared with a, and with c
    c = chat(_words(40, 8), "done")
    spec = DedupSpec(threshold=0.7)
    assert jaccard(shingles(a, 3), shingles(b, 3)) >= 0.7 and jaccard(shingles(b, 3), shingles(c, 3)) >= 0.7
    assert jaccard(shingles(a, 3), shingles(c, 3)) < 0.7
    found = _duplicates({"k:1": a, "k:2": b, "k:3": c, "k:4": chat(_words(40, 100), "other")}, spec)
    assert found == {"k:2": (NEAR_DUPLICATE, "duplicate of k:1"), "k:3": (NEAR_DUPLICATE, "duplicate of k:1")}


def test_an_exact_copy_of_a_near_duplicate_joins_its_cluster_and_is_named_by_its_keeper():
    """The reason says how a row relates to the row kept in its place: exact only when it is that row's text."""
    a, b = chat(_words(40), "done"), chat(_words(40, 4), "done")
    found = _duplicates({"k:1": a, "k:2": b, "k:3": [dict(m) for m in b], "k:4": [dict(m) for m in a]},
                        DedupSpec(threshold=0.7))
    assert found == {"k:2": (NEAR_DUPLICATE, "duplicate of k:1"), "k:3": (NEAR_DUPLICATE, "duplicate of k:1"),
                     "k:4": (EXACT_DUPLICATE, "duplicate of k:1")}


@pytest.mark.parametrize("spec", [DedupSpec(threshold=0.7), DedupSpec(threshold=None),
                                  DedupSpec(exact=False, threshold=0.7)], ids=["exact+near", "exact", "near"])
def test_the_same_rows_in_any_order_keep_the_same_rows(spec):
    rng = np.random.default_rng(1)
    conversations = {f"s:{i}": chat(_words(30, int(rng.integers(0, 12)) * 3), "ok") for i in range(40)}
    first = _duplicates(conversations, spec)
    shuffled = dict(sorted(conversations.items(), key=lambda kv: rng.random()))
    assert first and _duplicates(shuffled, spec) == first


def test_no_rows_no_duplicates():
    found = find_duplicates(np.zeros((0, 0), np.int64), DedupSpec(threshold=0.7), lambda positions: {})
    assert len(found.rows) == 0


def test_a_plain_text_eval_row_is_indexed_by_its_words(tmp_path):
    path = tmp_path / "pretraining.jsonl"
    path.write_text(json.dumps({"text": "the river that runs through the valley of Kalo is long and cold"}) + "\n")
    index = build_eval_index([str(path)], 8)
    assert is_contaminated(chat("Tell me: the river that runs through the valley of Kalo?", "Yes"), index)
    assert not is_contaminated(chat("What is the river of Kalo?", "Ven"), index)
