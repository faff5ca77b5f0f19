"""Varied chat requests for `draft-data --kinds chat=...`: what people ask an instruct model.

Seven kinds (writing, rewriting, translation, summarization, questions, arithmetic word
problems, code questions), each composed from word lists with a seeded random generator, so a
few hundred lines give hundreds of thousands of distinct requests. Texts to summarize or rewrite
are paragraphs cut from installed packages' docs where given, else composed here. Nothing is
taken from HumanEval, the standard library or `bench/prompts/` (the evaluation sets): the word
lists are this file's own. Pure Python: the caller applies the chat template."""
from __future__ import annotations

import random
import re

KINDS = ("writing", "rewriting", "translation", "summarization", "question", "arithmetic", "code")

TOPICS = ["a rainy afternoon", "moving to a new city", "learning to cook", "an old lighthouse", "a lost cat",
          "the ocean at night", "a school science fair", "a mountain hike", "a busy train station", "autumn leaves",
          "a first day at work", "a grandmother's garden", "a power cut", "a summer festival", "a friendship",
          "a small bookshop", "time travel", "a robot that learns to paint", "a desert sunrise", "a marathon",
          "volunteering at a shelter", "a broken bicycle", "a surprise party", "the last day of school",
          "a coffee shop", "a thunderstorm", "a village market", "a space station", "a chess tournament",
          "a road trip", "planting a tree", "a snowy forest", "a music lesson", "a museum visit", "a kind stranger",
          "the moon", "a fishing boat", "a new puppy", "a job interview", "recycling", "a birthday cake",
          "a camping weekend", "a city park", "an island", "a hot-air balloon", "a library card", "a quiet morning"]
FORMS = ["a short story", "a poem", "a haiku", "a limerick", "a diary entry", "a short speech", "a song chorus",
         "a product description", "a blog post introduction", "a news headline and first paragraph",
         "a dialogue between two friends", "a fable with a moral", "a postcard message", "a tweet"]
LETTERS = ["an email to my manager asking for a day off", "a note apologising to a friend for missing their party",
           "a message inviting my team to a lunch", "a letter to a landlord about a leaking tap",
           "a reference for a colleague who is leaving", "an email asking a teacher about homework",
           "a complaint about a late delivery", "a welcome message for new club members",
           "a congratulations card for a friend's graduation", "a reminder to pay the rent on Friday",
           "a cover letter for a job at a bakery", "an out-of-office reply"]
STYLES = ["", " Keep it under 100 words.", " Make it funny.", " Use simple words.", " Make it formal.",
          " Write it for children.", " Use three short paragraphs.", " End with a question."]
NAMES = ["Anna", "Ben", "Carlos", "Dina", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kemal", "Lucy",
         "Mei", "Noah", "Olga", "Priya", "Rosa", "Sam", "Tariq", "Yuki"]
SUBJECTS = ["My sister", "The new manager", "Our neighbours", "The children", "The old man", "My best friend",
            "The team", "The doctor", "Everyone in the office", "The students", "The shop owner", "My parents"]
VERBS = ["will visit the museum", "forgot to lock the door", "is baking bread", "wants to learn Japanese",
         "missed the last bus", "bought a red umbrella", "is painting the kitchen", "found a wallet in the park",
         "cannot come to the meeting", "is planning a trip to the coast", "repaired the old radio",
         "has read every book in the series", "needs more time to finish the project", "walks the dog every morning"]
WHENS = ["tomorrow", "last night", "this weekend", "every Sunday", "before the holidays", "after lunch",
         "next month", "on Monday", "yesterday evening", "in the spring"]
REWRITES = ["Rewrite this so it sounds more formal", "Make this sentence more polite", "Say this in simpler words",
            "Rewrite this in the passive voice", "Fix the grammar in this sentence", "Make this sound more exciting",
            "Rewrite this as a question", "Shorten this sentence", "Rewrite this for a ten-year-old",
            "Turn this into a friendly text message", "Rewrite this in the past tense"]
LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish"]
QUESTIONS = ["Why do {x}?", "How does {y} work?", "What is {z}?", "Explain {z} in simple terms.",
             "What are the pros and cons of {w}?", "Give me three tips for {v}.", "What is the history of {z}?",
             "How can I get better at {v}?", "Is it true that {t}? Explain.", "What should I know before {v}?"]
WHY = ["leaves change colour in autumn", "cats purr", "we have seasons", "bread rise", "onions make people cry",
       "planes stay in the air", "we dream", "stars twinkle", "ice float on water", "people get hiccups"]
HOW = ["a refrigerator", "the immune system", "a solar panel", "a vaccine", "the stock market", "GPS",
       "a bicycle gear", "photosynthesis", "a compass", "a credit score", "the internet", "a microwave oven"]
WHAT = ["inflation", "a black hole", "machine learning", "the water cycle", "democracy", "a carbon footprint",
        "compound interest", "the Renaissance", "a healthy diet", "climate change", "an ecosystem", "gravity"]
WEIGH = ["working from home", "electric cars", "living in a big city", "buying a used car", "online classes",
         "renting a flat", "social media", "getting a dog", "nuclear power", "a four-day work week"]
HABITS = ["saving money", "public speaking", "learning a language", "running", "writing essays", "studying",
          "staying focused", "cooking healthy meals", "making friends in a new city", "taking photos",
          "starting a garden", "managing stress", "moving abroad", "a long flight"]
CLAIMS = ["goldfish have a three-second memory", "we only use ten percent of our brains", "lightning never strikes "
          "the same place twice", "bats are blind", "cracking your knuckles causes arthritis", "the Great Wall "
          "can be seen from space"]
ITEMS = [("apples", "basket"), ("stickers", "sheet"), ("eggs", "carton"), ("books", "shelf"), ("cookies", "tray"),
         ("marbles", "bag"), ("flowers", "vase"), ("cards", "pack"), ("cupcakes", "box"), ("stamps", "album")]
LANGS = ["Python", "JavaScript", "Java", "C", "Go", "Rust", "SQL", "Bash", "TypeScript", "C++"]
TASKS = ["read a file line by line", "sort a list of numbers", "remove duplicates from a list", "count the words "
         "in a string", "check if a number is prime", "merge two dictionaries", "find the largest item in an array",
         "parse a JSON string", "get the current date", "make an HTTP request", "split a string by commas",
         "handle an exception", "write a loop that counts down from ten", "convert a string to an integer",
         "join a list of strings", "check if a file exists", "generate a random number", "define a class"]
CONCEPTS = [("a stack", "a queue"), ("a process", "a thread"), ("an array", "a linked list"), ("TCP", "UDP"),
            ("a compiler", "an interpreter"), ("git merge", "git rebase"), ("a class", "an object"),
            ("recursion", "iteration"), ("== ", "is in Python"), ("a set", "a dictionary"), ("HTTP GET", "POST")]


def composed_sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(WHENS)}."


def composed_paragraph(rng: random.Random) -> str:
    names = rng.sample(NAMES, 2)
    return (f"{names[0]} and {names[1]} planned {rng.choice(TOPICS)}. {rng.choice(SUBJECTS)} {rng.choice(VERBS)} "
            f"{rng.choice(WHENS)}, so the plan changed. {names[1]} {rng.choice(VERBS)}, and in the end everyone "
            f"agreed it was worth it.")


def arithmetic(rng: random.Random) -> str:
    name, (things, holder) = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 12), rng.randint(3, 15), rng.randint(1, 20)
    return rng.choice([
        f"{name} has {a} {holder}s with {b} {things} in each. {name} gives away {c} {things}. How many are left?",
        f"{name} buys {a} {things} at {b} dollars each and pays with a {10 * (a * b // 10 + 1)}-dollar note. "
        f"How much change does {name} get?",
        f"{'An' if holder[0] in 'aeiou' else 'A'} {holder} holds {b} {things}. How many {holder}s does {name} need for {a * b + c} {things}?",
        f"{name} reads {b} pages a day. How many days does a {a * b * 10}-page book take?",
        f"There are {a * b} {things}. {name} shares them equally among {a} friends. How many does each get?",
        f"{name} had {a + b + c} {things}, lost {c}, then found {a} more. How many {things} now?",
        f"A train travels {b * 10} km in {a} hours. What is its average speed?",
    ]) + rng.choice(["", " Show your working.", " Explain step by step."])


def code_question(rng: random.Random, docstrings: list[tuple[str, str]]) -> str:
    if docstrings and rng.random() < 0.3:
        name, sentence = rng.choice(docstrings)
        return rng.choice([f"Write a Python function `{name}`: {sentence}", f"How would I implement `{name}`? "
                           f"It should do this: {sentence}", f"Explain, with an example, a function that does "
                           f"this: {sentence}"])
    first, second = rng.choice(CONCEPTS)
    return rng.choice([f"How do I {rng.choice(TASKS)} in {rng.choice(LANGS)}?",
                       f"Show me how to {rng.choice(TASKS)} in {rng.choice(LANGS)}, with a short example.",
                       f"What is the difference between {first} and {second}?",
                       f"Explain {first} to a beginner programmer.",
                       f"Write a {rng.choice(LANGS)} snippet to {rng.choice(TASKS)}."])


def chat_request(rng: random.Random, paragraphs: list[str], docstrings: list[tuple[str, str]]) -> tuple[str, str]:
    """(kind, the user's message). paragraphs: prose to summarize or rewrite (may be empty);
    docstrings: (function name, first sentence) pairs for code requests (may be empty)."""
    kind = rng.choice(KINDS)
    text = rng.choice(paragraphs) if paragraphs and rng.random() < 0.5 else composed_paragraph(rng)
    if kind == "writing":
        ask = rng.choice([f"Write {rng.choice(FORMS)} about {rng.choice(TOPICS)}.", f"Write {rng.choice(LETTERS)}.",
                          f"Draft {rng.choice(LETTERS)}.", f"Give me ideas for {rng.choice(FORMS)} about "
                          f"{rng.choice(TOPICS)}."])
        return kind, ask + rng.choice(STYLES)
    if kind == "rewriting":
        sentence = composed_sentence(rng) if rng.random() < 0.6 else first_sentences(text, 2)
        return kind, f"{rng.choice(REWRITES)}: \"{sentence}\""
    if kind == "translation":
        sentence = composed_sentence(rng) if rng.random() < 0.7 else first_sentences(text, 1)
        return kind, rng.choice([f"Translate into {rng.choice(LANGUAGES)}: \"{sentence}\"",
                                 f"How do you say \"{sentence}\" in {rng.choice(LANGUAGES)}?"])
    if kind == "summarization":
        return kind, rng.choice(["Summarize this in one sentence: ", "Summarize the following: ",
                                 "Give me the main points of this text: ", "TL;DR: ", "Summarize briefly:\n\n"]) + text
    if kind == "question":
        template = rng.choice(QUESTIONS)
        return kind, template.format(x=rng.choice(WHY), y=rng.choice(HOW), z=rng.choice(WHAT), w=rng.choice(WEIGH),
                                     v=rng.choice(HABITS), t=rng.choice(CLAIMS))
    if kind == "arithmetic":
        return kind, arithmetic(rng)
    return kind, code_question(rng, docstrings)


def first_sentences(text: str, count: int) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(sentences[:count])


def doc_paragraphs(text: str, min_chars: int = 200, max_chars: int = 700) -> list[str]:
    """Plain paragraphs of a markdown/reST file: no code, tables, headings or link lists."""
    keep = []
    for block in re.split(r"\n\s*\n", text):
        flat = " ".join(block.split())
        if min_chars <= len(flat) <= max_chars and not re.search(r"[`|<>{}\[\]_=*#]|::|https?:", flat) \
                and flat[0].isupper() and flat.endswith("."):
            keep.append(flat)
    return keep


def docstring_sentences(text: str) -> list[tuple[str, str]]:
    """(function name, its docstring's first line) pairs of a Python source."""
    return [(name, sentence.strip().rstrip("\"' ")) for name, sentence in
            re.findall(r'def (\w+)\([^)]*\)[^:]*:\s*\n\s*(?:"""|\'\'\')\s*([^\n]{20,160})', text)]
