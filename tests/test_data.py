import json

import numpy as np
import pytest

from conftest import shared_dataset
from gensid.data import leave_one_out, load_dataset
from gensid.data.catalog import Interactions
from gensid.data.splits import PAD, pack_samples
from gensid.errors import DataError


def write_letter(folder, inter, items):
    folder.mkdir(exist_ok=True)
    (folder / "Toy.inter.json").write_text(json.dumps(inter))
    (folder / "Toy.item.json").write_text(json.dumps(items))
    return folder


ITEMS = {str(i): {"title": f"item {i}", "brand": "b", "categories": "x, y"} for i in range(6)}


def test_letter_loader(tmp_path):
    ds = load_dataset(write_letter(tmp_path / "toy", {"u1": [0, 1, 2], "u2": [3, 4, 5, 1]}, ITEMS))
    assert ds.name == "Toy" and len(ds.catalog) == 6 and len(ds.interactions) == 2
    assert ds.interactions.sequences[1].tolist() == [3, 4, 5, 1]
    assert ds.catalog.texts[0] == "title: item 0; brand: b; categories: x, y"
    assert ds.catalog.title(2) == "item 2"


@pytest.mark.parametrize(
    ("inter", "items", "message"),
    [
        ({"u1": [0, 99]}, ITEMS, r"user 'u1', position 1: item id 99 is not in Toy.item.json"),
        ({"u1": []}, ITEMS, r"user 'u1': empty item sequence"),
        ({"u1": 3}, ITEMS, r"user 'u1': expected a list of item ids"),
        ([1, 2], ITEMS, r"expected a JSON object at the top level"),
        ({"u1": [0]}, {"0": "just a string"}, r"item '0': expected an object of text fields"),
        ({"u1": [0]}, {"0": {"price": "3"}}, r"none of the text fields"),
    ],
)
def test_letter_errors_name_file_key_and_field(tmp_path, inter, items, message):
    folder = write_letter(tmp_path / "toy", inter, items)
    with pytest.raises(DataError, match=message):
        load_dataset(folder)


def test_invalid_json_reports_line(tmp_path):
    folder = write_letter(tmp_path / "toy", {"u1": [0]}, ITEMS)
    (folder / "Toy.inter.json").write_text('{\n "u1": [0,\n')
    with pytest.raises(DataError, match=r"Toy.inter.json:\d+: invalid JSON"):
        load_dataset(folder)


def test_recbole_atomic_files_sorted_by_time(tmp_path):
    (tmp_path / "m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\ta\t5\t30\n1\tb\t4\t10\n2\tc\t3\t5\n1\tc\t3\t20\n"
    )
    (tmp_path / "m.item").write_text("item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
                                     "a\tAlpha\tDrama\nb\tBeta\tComedy\nc\tGamma\tDrama\n")
    ds = load_dataset(tmp_path, text_fields=["movie_title", "class"])
    seq = [ds.catalog.item_ids[i] for i in ds.interactions.sequences[ds.interactions.user_ids.index("1")]]
    assert seq == ["b", "c", "a"]
    assert ds.catalog.title(0) == "Alpha"


def test_recbole_unknown_item_names_line(tmp_path):
    (tmp_path / "m.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\ta\t1\n1\tzz\t2\n")
    (tmp_path / "m.item").write_text("item_id:token\ttitle:token_seq\na\tAlpha\n")
    with pytest.raises(DataError, match=r"m.inter:3: item id 'zz' is not in the catalog"):
        load_dataset(tmp_path)


def test_csv_log_with_items_file(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\nu,x,2\nu,y,1\nv,x,5\n")
    (tmp_path / "items.csv").write_text("item,title\nx,Ex\ny,Why\n")
    ds = load_dataset(tmp_path / "log.csv", text_fields=["title"])
    user = ds.interactions.user_ids.index("u")
    assert [ds.catalog.item_ids[i] for i in ds.interactions.sequences[user]] == ["y", "x"]


def test_csv_log_bad_timestamp_and_missing_column(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\nu,x,2\nu,y,soon\n")
    with pytest.raises(DataError, match=r"log.csv:3: timestamp 'soon' is not a number"):
        load_dataset(tmp_path / "log.csv")
    (tmp_path / "log.csv").write_text("user,item\nu,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\]"):
        load_dataset(tmp_path / "log.csv")


def test_missing_source():
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset("/nonexistent/folder")


def test_leave_one_out_hand_case():
    inter = Interactions(["a", "b"], [np.array([1, 2, 3, 4, 5]), np.array([7, 8])])
    split = leave_one_out(inter, max_history=2)
    # user a: train targets 2, 3; valid target 4; test target 5; user b: one training sample
    assert split.train.targets.tolist() == [2, 3, 8]
    assert split.train.histories.tolist() == [[PAD, 1], [1, 2], [PAD, 7]]
    assert split.valid.targets.tolist() == [4] and split.valid.histories.tolist() == [[2, 3]]
    assert split.test.targets.tolist() == [5] and split.test.histories.tolist() == [[3, 4]]
    assert split.test.users.tolist() == [0]


def test_pack_samples_keeps_the_newest_items_left_padded():
    rows = [(7, np.array([1, 2, 3, 4]), 5), (8, np.array([9]), 6), (9, np.array([], dtype=np.int64), 0)]
    packed = pack_samples(rows, 3)
    assert packed.histories.tolist() == [[2, 3, 4], [PAD, PAD, 9], [PAD, PAD, PAD]]
    assert packed.targets.tolist() == [5, 6, 0] and packed.users.tolist() == [7, 8, 9]
    assert pack_samples(rows, 0).histories.shape == (3, 0)  # no history at all


def test_beauty_matches_published_statistics():
    ds = load_dataset(shared_dataset("amazon-beauty"))
    assert (len(ds.interactions), len(ds.catalog), ds.interactions.num_interactions) == (22363, 12101, 198502)
    split = leave_one_out(ds.interactions, 20)
    assert len(split.test) == 22363 and len(split.train) == 198502 - 3 * 22363
