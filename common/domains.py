"""Amazon review categories of the 2014 and 2018 releases, their files, and the short domain names.

A domain is named by its category (`Sports_and_Outdoors`, `Prime_Pantry`, any of the lists below) or
by its short name, which follows one rule: the category's first word, lower-cased
(`Sports_and_Outdoors` -> `sports`, `Prime_Pantry` -> `prime`), except `Grocery_and_Gourmet_Food`,
which the paper calls `food`; where two categories share a first word (`Amazon_Instant_Video`,
`AMAZON_FASHION`), each one's short name is its whole name lower-cased. Short names name the files
(`traindata/<short>.jsonl`). A category outside the lists works too when its files are in RAW_DIR.

Files (reference-behaviour.md; McAuley lab releases):
- 2014: `reviews_<Category>_5.json.gz` (JSON lines) + `meta_<Category>.json.gz` (Python literals);
- 2018: `<Category>_5.json.gz` + `meta_<Category>.json.gz` (both JSON lines).
"""

import os

from common.cli import UserError

CATEGORIES_2014 = (
    "Amazon_Instant_Video", "Apps_for_Android", "Automotive", "Baby", "Beauty", "Books", "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
    "Grocery_and_Gourmet_Food", "Health_and_Personal_Care", "Home_and_Kitchen", "Kindle_Store",
    "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)
CATEGORIES_2018 = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music",
    "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific",
    "Kindle_Store", "Luxury_Beauty", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Prime_Pantry", "Software",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)
RELEASES = {  # release -> (categories, review file pattern, meta file pattern)
    "2014": (CATEGORIES_2014, "reviews_{}_5.json.gz", "meta_{}.json.gz"),
    "2018": (CATEGORIES_2018, "{}_5.json.gz", "meta_{}.json.gz"),
}
PAPER_SHORT_NAMES = {"Grocery_and_Gourmet_Food": "food"}
PAPER_DOMAINS = ["beauty", "sports", "clothing", "food"]


def _first_word(category):
    return category.split("_")[0].lower()


def known_categories():
    """Every category of both releases, each once, in release order."""
    return list(dict.fromkeys(CATEGORIES_2014 + CATEGORIES_2018))


def _rule(category):
    """The short name of a category, by the rule in the module docstring."""
    if category in PAPER_SHORT_NAMES:
        return PAPER_SHORT_NAMES[category]
    word = _first_word(category)
    shared = [c for c in known_categories() if _first_word(c) == word and c not in PAPER_SHORT_NAMES]
    return category.lower() if len(shared) > 1 else word


CATEGORIES = {_rule(c): c for c in known_categories()}  # short name -> category


def short_name(category):
    """'Sports_and_Outdoors' -> 'sports'; a short name is returned unchanged."""
    return category if category in CATEGORIES else _rule(category)


def release_files(category, raw_dir=None):
    """[(release, reviews file name, meta file name)] for a category: its releases, 2014 first; with
    raw_dir, only layouts whose review file is there (any category name, listed or not)."""
    out = []
    for release, (categories, reviews, meta) in RELEASES.items():
        names = (release, reviews.format(category), meta.format(category))
        if raw_dir is not None:
            if os.path.isfile(os.path.join(raw_dir, names[1])):
                out.append(names)
        elif category in categories:
            out.append(names)
    return out


def category(name, raw_dir=None):
    """Short name or category -> the Amazon category name.

    A listed category or short name always resolves; another name resolves when RAW_DIR holds its
    files in either layout. Anything else is the one "unknown" case (UserError).
    """
    if name in CATEGORIES:
        return CATEGORIES[name]
    if name in known_categories():
        return name
    matches = [c for c in known_categories() if c.lower() == name.lower()]
    if matches:
        return matches[0]
    if raw_dir is not None and release_files(name, raw_dir):
        return name
    where = f" and no files for it in {raw_dir}" if raw_dir is not None else ""
    raise UserError(f"unknown domain '{name}': not an Amazon 2014/2018 category or short name{where} "
                    f"(e.g. {', '.join(PAPER_DOMAINS)}, Prime_Pantry; see common/domains.py)")
