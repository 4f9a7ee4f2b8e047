"""Any Amazon category by name: the short-name rule, the files of both releases, processing of
categories outside the paper's (a 2018 one, one listed nowhere), and the download plan."""

import json
import os
import shutil

import pytest

from common.cli import UserError
from common.domains import CATEGORIES, CATEGORIES_2014, CATEGORIES_2018, category, short_name
from data_process import download, process
from tests.helpers import read_lines, write_raw


def test_short_names_follow_one_rule_and_are_unique():
    assert [short_name(c) for c in ("Beauty", "Sports_and_Outdoors", "Clothing_Shoes_and_Jewelry",
                                    "Grocery_and_Gourmet_Food", "Toys_and_Games")] == \
        ["beauty", "sports", "clothing", "food", "toys"]
    assert short_name("Prime_Pantry") == "prime" and short_name("Arts_Crafts_and_Sewing") == "arts"
    # two categories share the first word "amazon": each is named in full
    assert short_name("AMAZON_FASHION") == "amazon_fashion"
    assert short_name("Amazon_Instant_Video") == "amazon_instant_video"
    every = set(CATEGORIES_2014) | set(CATEGORIES_2018)
    assert len(CATEGORIES) == len(every) and set(CATEGORIES.values()) == every
    for short, cat in CATEGORIES.items():
        assert category(short) == cat and category(cat) == cat and short_name(short) == short


def with_category(raw, cat, layout):
    """The small Beauty raw files of tests.helpers renamed to another category."""
    src = write_raw(raw.parent / f"src-{layout}", layout=layout)
    os.makedirs(raw, exist_ok=True)
    reviews = "reviews_{}_5.json.gz" if layout == "2014" else "{}_5.json.gz"
    shutil.copy(src / reviews.format("Beauty"), raw / reviews.format(cat))
    shutil.copy(src / "meta_Beauty.json.gz", raw / f"meta_{cat}.json.gz")
    return raw


def run(raw, out, domain):
    process.main(["--raw-dir", str(raw), "--domain", domain, "--train-dir", str(out / "train"),
                  "--test-dir", str(out / "test"), "--train-samples", "5"])


@pytest.mark.parametrize("domain", ["Prime_Pantry", "prime"])
def test_a_2018_category_is_processed_by_name_or_short_name(tmp_path, domain):
    raw = with_category(tmp_path / "raw", "Prime_Pantry", "2018")
    run(raw, tmp_path, domain)
    assert len(read_lines(tmp_path / "test" / "prime.jsonl")) == 80
    assert json.loads((tmp_path / "train" / "prime.stats.json").read_text())["domain"] == "prime"


def test_a_category_listed_nowhere_works_when_its_files_are_there(tmp_path):
    raw = with_category(tmp_path / "raw", "Handmade_Products", "2018")
    run(raw, tmp_path, "Handmade_Products")
    assert (tmp_path / "train" / "handmade.jsonl").is_file()
    with pytest.raises(UserError, match="unknown domain 'Garden_Gnomes'.*no files for it"):
        run(raw, tmp_path, "Garden_Gnomes")


def test_download_takes_each_category_from_its_release(tmp_path):
    assert download.files_to_get("Beauty", "auto") == ("2014", ["reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"])
    assert download.files_to_get("Prime_Pantry", "auto") == \
        ("2018", ["Prime_Pantry_5.json.gz", "meta_Prime_Pantry.json.gz"])
    assert download.files_to_get("Toys_and_Games", "2018")[0] == "2018"
    assert download.HOSTS["2018"][1].endswith("/metaFiles2/")
    with pytest.raises(UserError, match="Prime_Pantry has no 2014 release"):
        download.files_to_get("Prime_Pantry", "2014")
    mirror = with_category(tmp_path / "mirror", "Prime_Pantry", "2018")
    download.main(["--raw-dir", str(tmp_path / "raw"), "--domains", "prime", "--mirror", str(mirror)])
    assert sorted(os.listdir(tmp_path / "raw")) == ["Prime_Pantry_5.json.gz", "meta_Prime_Pantry.json.gz"]
