"""Amazon category names and the short domain names used for files (reference-behaviour.md)."""

from common.cli import UserError

CATEGORIES = {
    "beauty": "Beauty",
    "sports": "Sports_and_Outdoors",
    "clothing": "Clothing_Shoes_and_Jewelry",
    "food": "Grocery_and_Gourmet_Food",
    "toys": "Toys_and_Games",
    "home": "Home_and_Kitchen",
    "electronics": "Electronics",
    "cell": "Cell_Phones_and_Accessories",
    "health": "Health_and_Personal_Care",
    "movies": "Movies_and_TV",
    "books": "Books",
    "office": "Office_Products",
    "pet": "Pet_Supplies",
    "tools": "Tools_and_Home_Improvement",
    "video": "Video_Games",
    "garden": "Patio_Lawn_and_Garden",
    "automotive": "Automotive",
    "baby": "Baby",
    "music": "Digital_Music",
    "instruments": "Musical_Instruments",
    "kindle": "Kindle_Store",
}
PAPER_DOMAINS = ["beauty", "sports", "clothing", "food"]


def short_name(category):
    """'Sports_and_Outdoors' -> 'sports'; a short name is returned unchanged."""
    if category in CATEGORIES:
        return category
    for short, cat in CATEGORIES.items():
        if cat == category:
            return short
    return category.split("_")[0].lower()


def category(name):
    """Short name or category -> Amazon category name; UserError if unknown."""
    if name in CATEGORIES:
        return CATEGORIES[name]
    if name in CATEGORIES.values():
        return name
    known = ", ".join(sorted(CATEGORIES))
    raise UserError(f"unknown domain '{name}' (known: {known}, or a full category name)")
