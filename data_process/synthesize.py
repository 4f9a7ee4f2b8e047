"""Synthetic Amazon-like domains: reads nothing, writes reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz.

The files follow the 2014 download layout (review lines are JSON; meta lines are Python dict
literals), so data_process.process runs on them unchanged. Every user and item has at least 5
interactions (5-core: items too rare to reach 5 are dropped from the catalogue and the users are
drawn again, so no sequence has a gap), no user meets an item twice, and each user's timestamps
strictly increase.

Item titles are "<Brand> <colour> <product type> [<variant>]" (3-6 words). The colour words are
shared by every domain; brands and product types are the domain's own.

How a user's sequence is drawn, in every domain:
  * a user carries a latent colour state; it starts at the user's taste in that domain, which is
    the user's global taste with probability --carry (tastes carry across domains in part) and a
    random colour otherwise;
  * each item shows the state's colour with probability --rule-strength, else a random colour;
    within a colour, items are drawn by popularity (Zipf, exponent --popularity), a weaker signal;
  * between items the state follows the domain's rule with probability |agreement|, else it
    jumps to a random colour. The target domain's rule is "stay" (the next item shares its colour
    word with the history); a source with agreement > 0 follows the same rule (its structure
    transfers to the target); a source with agreement < 0 follows the conflicting rule "move on":
    the next state is the colour after the current one in a fixed cycle of all the colours (black,
    white, red, ..., beige, black), so the next item's colour follows the last one's and is none
    of the recent history's (a model trained on it ranks the target's right colour low); agreement
    0 is unrelated (colours carry no sequential structure). Two other conflicting rules were tried
    and dropped (docs/results.md): "switch to the paired colour" makes histories alternate between
    two colours, so "pick a colour of the history" still works in both domains and that source
    helped; "leave for a colour not had yet" was never learned at this scale (not a copy rule).

--agreement takes one DOMAIN=VALUE per source, VALUE in [-1, 1]; sources not named get 0. The
default (target sports, beauty=1.0, toys=-1.0) gives the quickstart one helping and one hurting
source. The same users (reviewerIDs) appear in several domains: each user joins each domain with
probability --overlap. Same arguments and --seed -> byte-identical files.
"""

import argparse
import datetime
import gzip
import json
import os
import zlib

import numpy as np
from tqdm import tqdm

from common.cli import UserError, run_main
from common.domains import category, short_name
from common.io import atomic_path

# in the order of the conflicting rule's cycle
COLOURS = ["black", "white", "red", "green", "blue", "orange", "pink", "grey",
           "purple", "yellow", "silver", "gold", "navy", "teal", "brown", "beige"]
VARIANTS = ["", "", "Mini", "Pro", "XL", "Deluxe", "Travel", "2 Pack", "3 Pack", "Size M"]
VOCAB = {  # domain -> (display category, brands, product types)
    "sports": ("Sports & Outdoors",
               "Trailmax Summitco Ridgeline Aquafin Peakform Kinetix Stridex Campwell Velotrax Dunegear",
               "Yoga Mat|Water Bottle|Tent|Backpack|Dumbbell|Jump Rope|Cycling Gloves|Headlamp|"
               "Sleeping Bag|Trekking Pole|Swim Goggles|Resistance Band|Duffel Bag|Compass|Knee Brace"),
    "beauty": ("Beauty",
               "Lumiere Velvetta Glowra Purelle Silkara Bellamie Dermaline Aurelis Cocolux Nailista",
               "Lipstick|Nail Polish|Eyeliner|Face Cream|Shampoo|Hair Brush|Perfume|Mascara|"
               "Body Lotion|Makeup Bag|Eyeshadow Palette|Hair Clip|Face Mask|Blush|Lip Balm"),
    "toys": ("Toys & Games",
             "Playnest Bricktopia Funzy Wonderkin Tinkertot Jollibun Puzzlix Robokid Dollworth Zoomly",
             "Building Blocks|Puzzle|Plush Bear|Race Car|Doll House|Card Game|Yo Yo|Kite|"
             "Action Figure|Board Game|Toy Train|Bubble Wand|Play Dough|Robot Kit|Spinning Top"),
    "clothing": ("Clothing, Shoes & Jewelry",
                 "Threadly Urbanix Cottonwood Stylara Denimo Lacefield Wovenly Modaro Knitwell Solera",
                 "T Shirt|Hoodie|Sneakers|Scarf|Necklace|Jeans|Dress|Socks|Watch|Belt|Cap|"
                 "Sandals|Bracelet|Jacket|Ring"),
    "food": ("Grocery & Gourmet Food",
             "Harvestly Nuttera Brewmore Spicewell Oatopia Farmleaf Honeydale Crunchos Saltbay Leafora",
             "Coffee Beans|Tea Bags|Granola|Olive Oil|Pasta|Hot Sauce|Honey Jar|Trail Mix|"
             "Rice Crackers|Cookies|Jam|Spice Rub|Oatmeal|Popcorn|Chocolate Bar"),
}
DEFAULT_AGREEMENT = {"beauty": 1.0, "toys": -1.0}
START_DAY = datetime.date(2010, 1, 1)
ALNUM = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


def domain_rng(seed, domain, part):
    """A generator that depends only on the seed, the domain and what it is for."""
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), part])


def random_id(rng, prefix, length, taken):
    """A fresh id like the real ones ('A1YJEY40YUW4SE', 'B004756YJA'), unique within `taken`."""
    while True:
        ident = prefix + "".join(rng.choice(ALNUM, length))
        if ident not in taken:
            taken.add(ident)
            return ident


def build_catalog(domain, n_items, popularity, seed, asins, shared_brands=False):
    """Items of one domain: unique titles, colours spread evenly, Zipf popularity within a colour.
    With `shared_brands` the brands come from one list for every domain (a brand no longer tells
    the domain; only the product type does)."""
    rng = domain_rng(seed, domain, 0)
    _, brands, types = VOCAB[domain]
    brands, types = brands.split(), types.split("|")
    if shared_brands:
        brands = [b for d in sorted(VOCAB) for b in VOCAB[d][1].split()]
    combos = len(brands) * len(COLOURS) * len(types) * len(set(VARIANTS))
    if n_items > combos // 4:
        raise UserError(f"--items {n_items} is too many for {domain} (at most {combos // 4})")
    items, titles = [], set()
    while len(items) < n_items:
        colour = len(items) % len(COLOURS)
        brand, kind, variant = rng.choice(brands), rng.choice(types), rng.choice(VARIANTS)
        title = " ".join(w for w in (brand, COLOURS[colour].capitalize(), kind, variant) if w)
        if title in titles:
            continue
        titles.add(title)
        items.append({"asin": random_id(rng, "B0", 8, asins), "title": title, "brand": brand,
                      "type": kind, "colour": colour})
    weights = np.zeros(n_items)
    for c in range(len(COLOURS)):
        pool = np.arange(c, n_items, len(COLOURS))
        weights[pool] = 1.0 / (rng.permutation(len(pool)) + 1.0) ** popularity
    return items, weights


def make_users(n_users, seed):
    """reviewerIDs and each user's global taste (a colour index)."""
    rng = np.random.default_rng([seed, 1])
    taken = set()
    ids = [random_id(rng, "A", 13, taken) for _ in range(n_users)]
    return ids, rng.integers(len(COLOURS), size=n_users)


RULES = ("stay", "move-on")


def next_state(rng, state, agreement, target_rule="stay"):
    """W.p. |agreement| the target's rule (agreement > 0) or the other one (< 0), else a jump to a
    random colour. "stay": the same colour; "move-on": the next colour of the cycle."""
    if rng.random() < abs(agreement):
        rule = target_rule if agreement > 0 else RULES[1 - RULES.index(target_rule)]
        return state if rule == "stay" else (state + 1) % len(COLOURS)
    return int(rng.integers(len(COLOURS)))


def pick_item(rng, colour, weights, used):
    """A popularity-weighted item of `colour` the user has not met yet (any colour if exhausted)."""
    pool = np.arange(colour, len(weights), len(COLOURS))
    w = weights[pool]
    w[[(i - colour) // len(COLOURS) for i in used if i % len(COLOURS) == colour]] = 0.0
    if w.sum() == 0:  # this colour is used up (or dropped): any colour
        pool, w = np.arange(len(weights)), weights.copy()
        w[used] = 0.0
    cum = np.cumsum(w)
    return int(pool[np.searchsorted(cum, rng.random() * cum[-1], side="right")])


def user_sequence(rng, length, taste, agreement, args, weights):
    """One user's items in one domain, in time order."""
    state, seq = taste, []
    for _ in range(length):
        shown = state if rng.random() < args.rule_strength else int(rng.integers(len(COLOURS)))
        seq.append(pick_item(rng, shown, weights, seq))
        state = next_state(rng, state, agreement, args.target_rule)
    return seq


def simulate_domain(domain, agreement, users, tastes, weights, args):
    """{user index: [item index, ...]} for the users who join this domain."""
    rng = domain_rng(args.seed, domain, 1)
    sequences = {}
    for u in tqdm(range(len(users)), desc=f"simulate {domain}", leave=False):
        joins = rng.random() < args.overlap
        taste = tastes[u] if rng.random() < args.carry else int(rng.integers(len(COLOURS)))
        length = int(rng.integers(args.min_len, args.max_len + 1))
        if joins:
            sequences[u] = user_sequence(rng, length, taste, agreement, args, weights)
    return sequences


def simulate_5core(domain, agreement, users, tastes, weights, args, k=5):
    """Simulate; while some items get fewer than k interactions, drop them from the catalogue and
    draw the users again (removing items afterwards would join unrelated neighbours)."""
    weights = weights.copy()
    for _ in range(20):
        sequences = simulate_domain(domain, agreement, users, tastes, weights, args)
        counts = np.bincount([i for seq in sequences.values() for i in seq], minlength=len(weights))
        rare = (counts < k) & (weights > 0)
        if not rare.any():
            return sequences, int(np.count_nonzero(weights == 0))
        weights[rare] = 0.0
        if np.count_nonzero(weights) < max(2 * args.max_len, len(COLOURS)):
            break
    raise UserError(f"{domain}: too few interactions for --items {args.items}; "
                    "raise --users or lower --items")


def review_lines(domain, sequences, users, seed):
    """JSON review lines, grouped by user, each user's times strictly increasing (whole days)."""
    rng = domain_rng(seed, domain, 2)
    for u in sorted(sequences, key=lambda u: users[u]):
        day = START_DAY + datetime.timedelta(days=int(rng.integers(0, 1500)))
        for item in sequences[u]:
            day += datetime.timedelta(days=int(rng.integers(1, 22)))
            stamp = int(datetime.datetime(day.year, day.month, day.day,
                                          tzinfo=datetime.timezone.utc).timestamp())
            yield {"reviewerID": users[u], "asin": item["asin"], "overall": 5.0,
                   "unixReviewTime": stamp, "reviewTime": f"{day.month:02d} {day.day}, {day.year}"}


def meta_line(domain, item):
    """One meta line as the 2014 files have it: a Python dict literal (single quotes)."""
    display = VOCAB[domain][0]
    return repr({"asin": item["asin"], "title": item["title"], "brand": item["brand"],
                 "categories": [[display, item["type"]]]})


def write_gzip_lines(path, lines):
    """Write text lines to a byte-deterministic gzip file (mtime 0, no file name), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            for line in lines:
                gz.write((line + "\n").encode("utf-8"))


def parse_agreement(specs, target, domains):
    """['beauty=1', 'toys=-1'] -> {domain: value}; every source not named gets 0."""
    if specs is None:
        specs = [f"{d}={v}" for d, v in DEFAULT_AGREEMENT.items() if d in domains]
    agreement = {d: 0.0 for d in domains if d != target}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            value = float(value)
        except ValueError:
            value = None
        if not sep or value is None or not -1.0 <= value <= 1.0:
            raise UserError(f"--agreement '{spec}': expected DOMAIN=VALUE with VALUE in [-1, 1]")
        name = short_name(category(name))
        if name not in agreement:
            raise UserError(f"--agreement '{spec}': {name} is not a source domain in --domains")
        agreement[name] = value
    agreement[target] = 1.0
    return agreement


def check_args(args):
    """Normalise domain names and reject settings that cannot give 5-core data."""
    args.domains = [short_name(category(d)) for d in args.domains]
    args.target = short_name(category(args.target))
    unknown = [d for d in args.domains if d not in VOCAB]
    if unknown:
        raise UserError(f"no synthetic vocabulary for {', '.join(unknown)} (have: {', '.join(VOCAB)})")
    if len(set(args.domains)) != len(args.domains) or args.target not in args.domains:
        raise UserError("--domains must be distinct and include --target")
    if not 5 <= args.min_len <= args.max_len:
        raise UserError("need 5 <= --min-len <= --max-len (the data is 5-core)")
    if args.users < 10 or args.items < 2 * len(COLOURS):
        raise UserError(f"need --users >= 10 and --items >= {2 * len(COLOURS)}")
    for name in ("rule_strength", "carry", "overlap"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.popularity < 0:
        raise UserError("--popularity must be >= 0")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--out-dir", required=True, help="folder for the raw .json.gz files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domains", nargs="+", default=["sports", "beauty", "toys"])
    p.add_argument("--target", default="sports", help="the domain whose rule is --target-rule")
    p.add_argument("--target-rule", choices=RULES, default="stay",
                   help="the target's rule; agreement > 0 gives a source the same, < 0 the other")
    p.add_argument("--agreement", nargs="+", metavar="DOMAIN=VALUE",
                   help="per source, in [-1, 1]: 1 same rule as the target, -1 conflicting, "
                        "0 unrelated (default: beauty=1.0 toys=-1.0)")
    p.add_argument("--users", type=int, default=3000, help="users in the shared pool")
    p.add_argument("--overlap", type=float, default=0.7, help="chance a user joins each domain")
    p.add_argument("--items", type=int, default=600, help="items per domain")
    p.add_argument("--min-len", type=int, default=6, help="fewest interactions per user and domain")
    p.add_argument("--max-len", type=int, default=12, help="most interactions per user and domain")
    p.add_argument("--rule-strength", type=float, default=0.85,
                   help="chance an item shows the user's current colour")
    p.add_argument("--carry", type=float, default=0.7,
                   help="chance a user's taste in a domain is their global taste")
    p.add_argument("--popularity", type=float, default=1.0, help="Zipf exponent within a colour")
    p.add_argument("--shared-brands", action="store_true",
                   help="every domain draws its brands from one list (domains look more alike)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    agreement = parse_agreement(args.agreement, args.target, args.domains)
    users, tastes = make_users(args.users, args.seed)
    asins = set()
    for domain in args.domains:
        items, weights = build_catalog(domain, args.items, args.popularity, args.seed, asins,
                                       args.shared_brands)
        sequences, rare = simulate_5core(domain, agreement[domain], users, tastes, weights, args)
        seqs = {u: [items[i] for i in seq] for u, seq in sequences.items()}
        used = sorted({i for seq in sequences.values() for i in seq})
        cat = category(domain)
        reviews = os.path.join(args.out_dir, f"reviews_{cat}_5.json.gz")
        meta = os.path.join(args.out_dir, f"meta_{cat}.json.gz")
        write_gzip_lines(reviews, (json.dumps(r) for r in review_lines(domain, seqs, users, args.seed)))
        write_gzip_lines(meta, (meta_line(domain, items[i]) for i in used))
        n = sum(len(s) for s in seqs.values())
        print(f"{domain}: agreement {agreement[domain]:+.2f}, {len(seqs)} users, {len(used)} items, "
              f"{n} interactions ({rare} items too rare, dropped) -> {reviews}, {meta}")
    return 0


if __name__ == "__main__":
    run_main(main)
