"""The shipped example task: turn a short customer message to a shop into one JSON object.

    <project> data synth --out data/shop_extraction --n 1200 --seed 0

The answers can be checked field by field, so "did fine-tuning help?" has an objective answer.
Every message is generated here from hand-written templates (no scraped or third-party text):
several phrasings per intent, injected typos, missing fields, and distractors such as prices,
ticket numbers or an earlier order id that must not be extracted.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .dataset import DATASET_INFO

FIELDS = ("intent", "order_id", "product", "quantity", "sentiment", "urgency")
INTENTS = ("purchase", "track", "cancel", "change", "return", "complaint", "delivery", "question", "praise")
SENTIMENTS = ("positive", "neutral", "negative")
URGENCIES = ("low", "medium", "high")

# Short on purpose: small models with 512-token sequences pay for it on every example.
SYSTEM_PROMPT = (
    "Reply with JSON only. Keys: intent (purchase|track|cancel|change|return|complaint|delivery|question|praise), "
    "order_id, product, quantity (int), sentiment (positive|neutral|negative), urgency (low|medium|high). "
    "Use null when absent."
)

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def synthesize(out_dir: str | Path, n: int = 1200, seed: int = 0) -> dict[str, int]:
    """Write n unique examples as train/validation/test.jsonl (80/10/10) in out_dir; return rows per split.

    The same (n, seed) always gives byte-identical files. Duplicates are removed before splitting,
    so no user message appears in two splits. DATASET_INFO records the generator, seed and row counts.
    """
    rng = random.Random(seed)
    examples: dict[str, dict[str, Any]] = {}  # user text -> labels; dict keeps first-seen order
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError(f"only {len(examples)} unique messages after {attempts} tries; lower n")
        text, labels = _make_example(rng, intent=INTENTS[attempts % len(INTENTS)])
        examples.setdefault(text, labels)

    items = list(examples.items())
    rng.shuffle(items)
    n_val, n_test = round(n * SPLIT_FRACTIONS["validation"]), round(n * SPLIT_FRACTIONS["test"])
    splits = {
        "train": items[: n - n_val - n_test],
        "validation": items[n - n_val - n_test : n - n_test],
        "test": items[n - n_test :],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        lines = [json.dumps({"messages": to_messages(text, labels)}, ensure_ascii=False) for text, labels in rows]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    counts = {name: len(rows) for name, rows in splits.items()}
    info = {"generator": f"{__package__.split('.')[0].replace('_', '-')} data synth", "seed": seed, "rows": counts}
    (out / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8", newline="\n")
    return counts


def to_messages(text: str, labels: dict[str, Any]) -> list[dict[str, str]]:
    """One chat example: system prompt, the customer message, the compact JSON answer (keys in FIELDS order)."""
    answer = json.dumps({field: labels[field] for field in FIELDS}, ensure_ascii=False, separators=(",", ":"))
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": text},
        {"role": "assistant", "content": answer},
    ]


# ---------------------------------------------------------------------------------------------
# Templates. Placeholders: {order} order id, {product} singular, {products} plural with {qty},
# {qty} quantity. A field is labelled only when its placeholder is in the template; "a mug" or
# "one of them" is not a quantity, so the rule stays objective.


# (sentiment, urgency) of each intent; a mood clause (neutral intents only) or an urgency clause
# appended to the message changes the label, so the model must read the cue, not guess from the intent.
_DEFAULT_LABELS = {
    "purchase": ("neutral", "low"),
    "track": ("neutral", "medium"),
    "cancel": ("neutral", "medium"),
    "change": ("neutral", "medium"),
    "return": ("neutral", "low"),
    "complaint": ("negative", "medium"),
    "delivery": ("neutral", "low"),
    "question": ("neutral", "low"),
    "praise": ("positive", "low"),
}
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "purchase": (
        "I'd like to order {qty} {products}.",
        "Can I buy {qty} {products}, please?",
        "Please put me down for {qty} {products}.",
        "Do you take phone orders? I want {qty} {products}.",
        "I want to purchase the {product}.",
        "How do I order {qty} {products} for my office?",
        "Could you send me {qty} {products}? I'll pay by card.",
        "Checkout keeps failing, can you place an order for the {product} for me?",
        "Looking to order {qty} {products} for our café.",
        "Is it possible to order the {product} online and pick it up in store?",
        "Please order {qty} {products} for me, same address as order {order}.",
        "I would like to buy the {product} you have on the homepage.",
    ),
    "track": (
        "Where is my order {order}?",
        "Can you tell me the status of order {order}?",
        "I ordered {qty} {products} last week (order {order}) and haven't heard anything.",
        "Has order {order} shipped yet?",
        "Any update on {order}? Still waiting.",
        "My {product} hasn't arrived. Order number {order}.",
        "What's happening with my order? I never got a shipping email.",
        "Tracking for {order} hasn't moved in days.",
        "Is my {product} on its way? Order {order}.",
        "Could you check on order {order} for me?",
        "I placed an order for {qty} {products} and the status still says processing.",
        "When will the {product} I ordered get here?",
    ),
    "cancel": (
        "Please cancel order {order}.",
        "I need to cancel my order {order}, I ordered by mistake.",
        "Can I still cancel the {product} I ordered?",
        "Cancel {order} please, I found it cheaper elsewhere.",
        "I changed my mind about the {qty} {products}, please cancel order {order}.",
        "How do I cancel an order that hasn't shipped yet?",
        "Please stop order {order} before it ships.",
        "I want to cancel the whole order {order}.",
        "Is it too late to cancel my {product} order?",
        "Cancel my order for {qty} {products}, please.",
        "Accidentally ordered twice, please cancel {order}.",
    ),
    "change": (
        "Can I change the quantity on order {order} to {qty}?",
        "Please update order {order}: I need {qty} {products} instead.",
        "I'd like to change the delivery address for order {order}.",
        "Can I swap the {product} in order {order} for a different colour?",
        "Please add {qty} {products} to my order {order}.",
        "Is it possible to change my order? I picked the wrong size of {product}.",
        "Change order {order} to express shipping, please.",
        "I need to edit my order {order} before it ships.",
        "Could you make it {qty} {products} on order {order} instead?",
        "Wrong address on my order {order}, can you fix it?",
        "Please replace the {product} in my order with something else.",
    ),
    "return": (
        "I want to return the {product} from order {order}.",
        "How do I send back {qty} {products}?",
        "The {product} doesn't fit, can I return it?",
        "I'd like a refund for order {order}.",
        "Please arrange a return for the {product}, order {order}.",
        "Can I return {qty} of the {products} I bought? Order {order}.",
        "What's your return policy? I have the {product} and don't need it.",
        "I'd like to exchange the {product} for a bigger size.",
        "Returning order {order}, please send me a label.",
        "The {product} isn't what I expected, I want my money back.",
        "I need to return {qty} {products}, they were a duplicate gift.",
    ),
    "complaint": (
        "The {product} arrived broken.",
        "Order {order} came with a cracked {product}. Very disappointed.",
        "I received {qty} {products} and all of them are damaged.",
        "Your courier left my parcel in the rain and the {product} is ruined.",
        "This is the worst service I've had. Order {order} is a mess.",
        "The {product} stopped working after a week.",
        "I was charged twice for order {order}!",
        "Nobody answers the phone and my {product} is faulty.",
        "The {product} smells awful and looks nothing like the photos.",
        "You sent me the wrong item for order {order}.",
        "I ordered {qty} {products} but the box was empty.",
        "Really poor quality, the handle of the {product} fell off.",
    ),
    "delivery": (
        "Do you deliver to the islands?",
        "How long does standard delivery take?",
        "How much is shipping for {qty} {products}?",
        "Can I choose a delivery date for order {order}?",
        "Do you ship the {product} abroad?",
        "Will order {order} need a signature on delivery?",
        "Is next-day delivery available for the {product}?",
        "Can the courier leave order {order} with my neighbour?",
        "What time do deliveries usually arrive?",
        "Is delivery free over a certain amount?",
        "Which courier do you use for large items like the {product}?",
    ),
    "question": (
        "Is the {product} dishwasher safe?",
        "What are the dimensions of the {product}?",
        "Do you have the {product} in stock?",
        "Is the {product} available in blue?",
        "Do you have {qty} {products} in stock? I need them for an event.",
        "What material is the {product} made of?",
        "Does the {product} come with a warranty?",
        "Can the {product} be used outdoors?",
        "Is there a discount if I buy {qty} {products}?",
        "How do I clean the {product}?",
        "Will the {product} be back in stock soon?",
    ),
    "praise": (
        "Just wanted to say the {product} is fantastic!",
        "Order {order} arrived early, thank you so much!",
        "Love the {product}, it's even better than the photos.",
        "Great service, the {qty} {products} arrived perfectly packed.",
        "Thanks for the quick refund, really appreciated.",
        "Your support team was so helpful with order {order}.",
        "The {product} is perfect, I'll be ordering again.",
        "Five stars for the {product}!",
        "Really impressed with how fast order {order} came.",
        "Bought {qty} {products} for my family and everyone loves them.",
        "Just a quick thank you, the {product} made my week.",
    ),
}

_PRODUCTS = (
    "ceramic mug", "bamboo cutting board", "wool blanket", "steel water bottle", "desk lamp",
    "linen tablecloth", "cast iron skillet", "yoga mat", "scented candle", "throw pillow",
    "coffee grinder", "french press", "wall clock", "bath towel", "laundry basket", "plant pot",
    "picnic rug", "chef's knife", "salad bowl", "teapot", "glass jar", "bed sheet set", "rain jacket",
    "wool scarf", "leather wallet", "canvas backpack", "travel mug", "electric kettle", "toaster",
    "standing mirror", "doormat", "bookshelf", "office chair", "phone case", "bluetooth speaker",
    "hand cream", "shower curtain", "lunch box", "baking tray", "oven mitt", "garden hose", "umbrella",
)  # fmt: skip

_GREETINGS = ("", "", "Hi!", "Hello.", "Hey there!", "Good morning!", "Dear support team.", "Hi team!")
_SIGNATURES = ("", "", "", "Best, {name}", "Regards, {name}", "- {name}", "Cheers, {name}", "{name}")
_NAMES = ("Anna", "Tom", "Priya", "Luis", "Mei", "Jonas", "Fatima", "Sam", "Olga", "Kwame", "Claire", "Ravi")
_MOODS = {
    "negative": ("This is really frustrating.", "Not happy at all.", "I'm quite annoyed, to be honest."),
    "positive": ("Love your shop, by the way!", "You've always been brilliant.", "Keep up the great work!"),
}
_URGENCY_CLAUSES = {
    "high": ("I need it by tomorrow!", "This is urgent.", "Please sort this out today.", "ASAP please!"),
    "low": ("No rush.", "Whenever you have a moment.", "Not urgent at all.", "Take your time."),
}
# Numbers and codes that look extractable but are not a quantity or this message's order id.
_DISTRACTORS = (
    "I've been a customer for {n} years.",
    "My zip code is {zip}.",
    "Ticket reference: #{ticket}.",
    "The tracking number is TRK{ticket}{n}.",
    "Invoice INV-{year}-{n:04d} is attached.",
    "It cost ${price}.",
    "You can call me on 07{ticket}{n}.",
)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _make_example(rng: random.Random, intent: str) -> tuple[str, dict[str, Any]]:
    template = _add_typos(rng, rng.choice(_TEMPLATES[intent]))
    labels: dict[str, Any] = {"intent": intent, "order_id": None, "product": None, "quantity": None}
    labels["sentiment"], labels["urgency"] = _DEFAULT_LABELS[intent]
    values = _fill(rng, template, labels)
    parts = [rng.choice(_GREETINGS), template.format(**values)]
    if rng.random() < 0.3:
        parts.append(_distractor(rng, has_order="{order}" in template))
    if labels["sentiment"] == "neutral" and rng.random() < 0.25:
        labels["sentiment"] = rng.choice(("negative", "positive"))
        parts.append(rng.choice(_MOODS[labels["sentiment"]]))
    if intent != "praise" and rng.random() < 0.35:
        labels["urgency"] = rng.choice(("high", "high", "low"))
        parts.append(rng.choice(_URGENCY_CLAUSES[labels["urgency"]]))
    parts.append(rng.choice(_SIGNATURES).format(name=rng.choice(_NAMES)))
    text = " ".join(part for part in parts if part)
    return (text.lower() if rng.random() < 0.08 else text), labels


def _fill(rng: random.Random, template: str, labels: dict[str, Any]) -> dict[str, str]:
    """Choose the placeholder values and record the labels they imply."""
    values: dict[str, str] = {}
    if "{order}" in template:
        labels["order_id"] = _order_id(rng)
        # Customers write ids loosely; the label is always the canonical upper-case form.
        values["order"] = rng.choice(("{}", "{}", "{}", "#{}", "{}")).format(labels["order_id"])
        if rng.random() < 0.1:
            values["order"] = values["order"].lower()
    if "{product}" in template or "{products}" in template:
        labels["product"] = rng.choice(_PRODUCTS)
        values["product"] = labels["product"]
    if "{qty}" in template:
        labels["quantity"] = rng.choice((1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12, 20))
        use_word = labels["quantity"] <= 10 and rng.random() < 0.3
        values["qty"] = _NUMBER_WORDS[labels["quantity"]] if use_word else str(labels["quantity"])
        if labels["product"]:
            values["products"] = _plural(labels["product"]) if labels["quantity"] > 1 else labels["product"]
    return values


def _order_id(rng: random.Random) -> str:
    # No I or O: they read as 1 and 0.
    return rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + f"{rng.randrange(10000, 100000)}"


def _distractor(rng: random.Random, has_order: bool) -> str:
    if has_order and rng.random() < 0.25:
        return f"(My earlier order {_order_id(rng)} was fine.)"
    return rng.choice(_DISTRACTORS).format(
        n=rng.randrange(2, 16),
        zip=rng.randrange(10000, 100000),
        ticket=rng.randrange(100000, 1000000),
        year=rng.randrange(2019, 2026),
        price=f"{rng.randrange(5, 200)}.{rng.choice(('99', '50', '00', '95'))}",
    )


def _plural(noun: str) -> str:
    if noun.endswith("knife"):
        return noun[:-2] + "ves"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def _add_typos(rng: random.Random, template: str) -> str:
    """Misspell up to two template words (never a placeholder, so labels stay exact)."""
    if rng.random() > 0.3:
        return template
    words = template.split(" ")
    candidates = [i for i, word in enumerate(words) if word.isalpha() and len(word) >= 4]
    for i in rng.sample(candidates, k=min(len(candidates), rng.choice((1, 1, 2)))):
        word, pos = words[i], rng.randrange(1, len(words[i]) - 1)
        edit = rng.choice(("swap", "drop", "double"))
        if edit == "swap":
            words[i] = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
        elif edit == "drop":
            words[i] = word[:pos] + word[pos + 1 :]
        else:
            words[i] = word[:pos] + word[pos] + word[pos:]
    return " ".join(words)
