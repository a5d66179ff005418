"""toolcalc: the embedded testbed's problem families.

Every family asks for an exact integer that a ~2M-parameter model cannot compute in its head but can obtain by
writing a few lines of Python. Problems are generated deterministically from a seed; ground truth comes from
trusted reference code in this module (never from executing model-style programs).

Besides the question and answer, each family knows the programs a tool-using solver writes for it:

- ``clean``: a correct program that works for every parameter draw;
- ``slips``: near-identical broken versions (a missing import, a misremembered API, an unclosed parenthesis,
  a conversion limit) whose fix is a small edit -- what SAAR repairs *shallowly*;
- ``wrong approach``: a natural but different first program (recursion, a non-existent library function)
  that fails for real on some or all inputs and must be replaced by a different program with different
  reasoning -- what SAAR repairs *deeply*.

Some failures are conditional on the input, as for real models: the recursive Fibonacci works for small n and
raises RecursionError for large n; ``str(a ** b)`` works until the result has more than 4,300 digits.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Callable

__all__ = [
    "FAMILIES",
    "Attempt",
    "Family",
    "Problem",
    "Solution",
    "make_problem",
    "problem_key",
]


@dataclass(frozen=True)
class Attempt:
    """One program a solver writes, with the sentence of reasoning that precedes the tool call."""

    reasoning: str
    code: str


@dataclass(frozen=True)
class Solution:
    """The programs for one problem: a clean one, plus optional failing first attempts with their fixes.

    ``slips`` are (broken, fixed) pairs where the fix is a small edit of the broken program (shallow);
    ``wrong`` are (first approach, replacement) pairs with different code and reasoning (deep). ``steps`` > 1
    means the clean solution is split into several calls, each later one using the printed result of the
    earlier ones (``{x0}`` placeholders are filled with the printed outputs).
    """

    clean: tuple[Attempt, ...]
    slips: tuple[tuple[Attempt, Attempt], ...] = ()
    wrong: tuple[tuple[Attempt, Attempt], ...] = ()


@dataclass(frozen=True)
class Problem:
    family: str
    params: dict
    question: str
    answer: int
    template: int

    @property
    def data_source(self) -> str:
        return f"toolcalc/{self.family}"


@dataclass(frozen=True)
class Family:
    name: str
    sample: Callable[[random.Random], dict]
    templates: tuple[str, ...]
    answer: Callable[[dict], int]
    solution: Callable[[dict, random.Random], Solution]
    weight: float = 1.0
    extra: dict = field(default_factory=dict)


def _digits(rng: random.Random, lo: int, hi: int) -> int:
    """A random integer with between lo and hi decimal digits."""
    d = rng.randint(lo, hi)
    return rng.randint(10 ** (d - 1), 10**d - 1)


def _pick(rng: random.Random, options: tuple[str, ...]) -> str:
    return options[rng.randrange(len(options))]


# ---------------------------------------------------------------------------------------------- product
def _product_sample(rng: random.Random) -> dict:
    return {"a": _digits(rng, 4, 7), "b": _digits(rng, 4, 7), "c": _digits(rng, 3, 6)}


def _product_solution(p: dict, rng: random.Random) -> Solution:
    a, b, c = p["a"], p["b"], p["c"]
    say = _pick(rng, ("I will multiply the numbers with Python.", "Let me compute the product."))
    clean = Attempt(say, f"a = {a}\nb = {b}\nc = {c}\nprint(a * b * c)")
    slip = Attempt(say, f"a = {a}\nb = {b}\nc = {c}\nprint(a * b * d)")
    fix = Attempt("I used an undefined name; the third factor is c.", clean.code)
    return Solution(clean=(clean,), slips=((slip, fix),))


# ---------------------------------------------------------------------------------------------- powmod
def _powmod_sample(rng: random.Random) -> dict:
    return {"a": rng.randint(2, 9999), "b": _digits(rng, 4, 9), "m": _digits(rng, 4, 8)}


def _powmod_solution(p: dict, rng: random.Random) -> Solution:
    a, b, m = p["a"], p["b"], p["m"]
    say = "Modular exponentiation with three-argument pow is fast."
    clean = Attempt(say, f"print(pow({a}, {b}, {m}))")
    slip = Attempt(say, f"import math\nprint(math.pow({a}, {b}, {m}))")
    fix = Attempt("math.pow takes two arguments; the built-in pow takes a modulus.", clean.code)
    return Solution(clean=(clean,), slips=((slip, fix),))


# ---------------------------------------------------------------------------------------------- digit sum
def _digitsum_sample(rng: random.Random) -> dict:
    return {"a": rng.randint(2, 99), "b": rng.randint(200, 6000)}


def _digitsum_solution(p: dict, rng: random.Random) -> Solution:
    a, b = p["a"], p["b"]
    say = "I will expand the power and add its digits."
    body = f"x = {a} ** {b}\nprint(sum(int(d) for d in str(x)))"
    clean = Attempt(say, "import sys\nsys.set_int_max_str_digits(0)\n" + body)
    # Natural, input-dependent failure: str() of an int over 4,300 digits raises ValueError.
    slip = Attempt(say, body)
    fix = Attempt("The number is too long for str(); I will raise the digit limit.", clean.code)
    return Solution(clean=(clean,), slips=((slip, fix),))


# ---------------------------------------------------------------------------------------------- prime count
_SIEVE_LIMIT = 200_000
@functools.lru_cache(maxsize=1)
def _prime_prefix() -> tuple[int, ...]:
    """prefix[n] = number of primes < n, for n <= _SIEVE_LIMIT (reference sieve, computed once)."""
    sieve = bytearray([1]) * _SIEVE_LIMIT
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(_SIEVE_LIMIT - 1) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, _SIEVE_LIMIT, i)))
    prefix, count = [0] * (_SIEVE_LIMIT + 1), 0
    for i in range(_SIEVE_LIMIT):
        prefix[i] = count
        count += sieve[i]
    prefix[_SIEVE_LIMIT] = count
    return tuple(prefix)


def _prime_count(n: int) -> int:
    """Number of primes < n."""
    return _prime_prefix()[n]


def _primes_sample(rng: random.Random) -> dict:
    return {"n": rng.randint(1_000, _SIEVE_LIMIT)}


_SIEVE_CODE = (
    "n = {n}\n"
    "is_p = [True] * n\n"
    "is_p[0] = is_p[1] = False\n"
    "for i in range(2, int(n ** 0.5) + 1):\n"
    "    if is_p[i]:\n"
    "        for j in range(i * i, n, i):\n"
    "            is_p[j] = False\n"
    "print(sum(is_p))"
)


def _primes_solution(p: dict, rng: random.Random) -> Solution:
    n = p["n"]
    clean = Attempt("A sieve of Eratosthenes counts the primes.", _SIEVE_CODE.format(n=n))
    wrong = Attempt(
        "The math module can test primality.",
        f"import math\nprint(sum(1 for k in range(2, {n}) if math.isprime(k)))",
    )
    fix = Attempt("math has no isprime, so I will write a sieve of Eratosthenes instead.", clean.code)
    return Solution(clean=(clean,), wrong=((wrong, fix),))


# ---------------------------------------------------------------------------------------------- divisor sum
def _divisor_sum(n: int) -> int:
    total = 0
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            total += d if d * d == n else d + n // d
    return total


def _divsum_sample(rng: random.Random) -> dict:
    n = 1
    while n < 1000:
        n = math.prod(rng.choice((2, 3, 5, 7, 11, 13)) for _ in range(rng.randint(4, 8)))
        n *= rng.randint(1, 97)
    return {"n": n}


def _divsum_solution(p: dict, rng: random.Random) -> Solution:
    n = p["n"]
    code = (
        "import math\n"
        f"n = {n}\n"
        "total = 0\n"
        "for d in range(1, math.isqrt(n) + 1):\n"
        "    if n % d == 0:\n"
        "        total += d\n"
        "        if d != n // d:\n"
        "            total += n // d\n"
        "print(total)"
    )
    say = "I will add the divisor pairs up to the square root."
    clean = Attempt(say, code)
    slip = Attempt(say, code.replace("import math\n", "", 1))
    fix = Attempt("I forgot to import math.", code)
    return Solution(clean=(clean,), slips=((slip, fix),))


# ---------------------------------------------------------------------------------------------- fibonacci mod
def _fib_mod(n: int, m: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % m
    return a


def _fib_sample(rng: random.Random) -> dict:
    return {"n": rng.choice((rng.randint(20, 900), rng.randint(900, 30_000))), "m": _digits(rng, 5, 9)}


def _fib_solution(p: dict, rng: random.Random) -> Solution:
    n, m = p["n"], p["m"]
    clean = Attempt(
        "I will iterate the recurrence and reduce modulo m.",
        f"a, b = 0, 1\nfor _ in range({n}):\n    a, b = b, (a + b) % {m}\nprint(a)",
    )
    # Natural, input-dependent failure: the memoised recursion exceeds the recursion limit for large n.
    wrong = Attempt(
        "A memoised recursive function computes Fibonacci numbers.",
        "from functools import lru_cache\n"
        "@lru_cache(maxsize=None)\n"
        "def fib(k):\n"
        f"    return k if k < 2 else (fib(k - 1) + fib(k - 2)) % {m}\n"
        f"print(fib({n}))",
    )
    fix = Attempt("The recursion is too deep, so I will use a loop instead.", clean.code)
    return Solution(clean=(clean,), wrong=((wrong, fix),))


# ---------------------------------------------------------------------------------------------- lcm
def _lcm_sample(rng: random.Random) -> dict:
    return {"xs": [rng.randint(2, 999) for _ in range(rng.randint(4, 8))]}


def _lcm_solution(p: dict, rng: random.Random) -> Solution:
    xs = ", ".join(map(str, p["xs"]))
    say = "math.lcm takes any number of arguments."
    clean = Attempt(say, f"import math\nprint(math.lcm({xs}))")
    slip = Attempt(say, f"print(math.lcm({xs}))")
    fix = Attempt("I forgot to import math.", clean.code)
    return Solution(clean=(clean,), slips=((slip, fix),))


# ---------------------------------------------------------------------------------------------- power sum
def _powsum_sample(rng: random.Random) -> dict:
    a = rng.randint(1, 5_000)
    return {"a": a, "b": a + rng.randint(10, 30_000), "k": rng.randint(2, 4)}


def _powsum_solution(p: dict, rng: random.Random) -> Solution:
    a, b, k = p["a"], p["b"], p["k"]
    say = "I will sum the powers over the range, including both ends."
    clean = Attempt(say, f"print(sum(i ** {k} for i in range({a}, {b} + 1)))")
    slip = Attempt(say, f"print(sum(i ** {k} for i in range({a}, {b} + 1))")
    fix = Attempt("A parenthesis was not closed.", clean.code)
    return Solution(clean=(clean,), slips=((slip, fix),))


# ---------------------------------------------------------------------------------------------- two steps
def _chain_sample(rng: random.Random) -> dict:
    return {"n": rng.randint(1_000, _SIEVE_LIMIT), "e": _digits(rng, 2, 5), "m": _digits(rng, 4, 7)}


def _chain_solution(p: dict, rng: random.Random) -> Solution:
    n, e, m = p["n"], p["e"], p["m"]
    first = Attempt("First I count the primes with a sieve.", _SIEVE_CODE.format(n=n))
    second = Attempt("Now I raise that count to the power modulo m.", f"print(pow({{x0}}, {e}, {m}))")
    wrong = Attempt(
        "First I count the primes with the math module.",
        f"import math\nprint(sum(1 for k in range(2, {n}) if math.isprime(k)))",
    )
    fix = Attempt("math has no isprime, so I will count the primes with a sieve.", first.code)
    return Solution(clean=(first, second), wrong=((wrong, fix),))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "product",
            _product_sample,
            ("What is {a} * {b} * {c}?", "Compute the product of {a}, {b} and {c}.",
             "Multiply {a} by {b} and then by {c}."),
            lambda p: p["a"] * p["b"] * p["c"],
            _product_solution,
        ),
        Family(
            "powmod",
            _powmod_sample,
            ("What is {a}^{b} mod {m}?", "Find the remainder when {a} to the power {b} is divided by {m}.",
             "Compute {a} raised to {b}, modulo {m}."),
            lambda p: pow(p["a"], p["b"], p["m"]),
            _powmod_solution,
        ),
        Family(
            "digit_sum",
            _digitsum_sample,
            ("What is the sum of the digits of {a}^{b}?", "Add up the decimal digits of {a} to the power {b}.",
             "Find the digit sum of {a}**{b}."),
            lambda p: sum(map(int, _big_str(p["a"] ** p["b"]))),
            _digitsum_solution,
        ),
        Family(
            "prime_count",
            _primes_sample,
            ("How many primes are less than {n}?", "Count the prime numbers below {n}.",
             "Find the number of primes p with p < {n}."),
            lambda p: _prime_count(p["n"]),
            _primes_solution,
        ),
        Family(
            "divisor_sum",
            _divsum_sample,
            ("What is the sum of all positive divisors of {n}?", "Add up every divisor of {n}.",
             "Compute sigma({n}), the sum of the divisors of {n}."),
            lambda p: _divisor_sum(p["n"]),
            _divsum_solution,
        ),
        Family(
            "fib_mod",
            _fib_sample,
            ("What is the {n}-th Fibonacci number modulo {m}?", "Compute F({n}) mod {m}, where F(0)=0 and F(1)=1.",
             "Find the remainder of Fibonacci number {n} divided by {m}."),
            lambda p: _fib_mod(p["n"], p["m"]),
            _fib_solution,
        ),
        Family(
            "lcm",
            _lcm_sample,
            ("What is the least common multiple of {xs}?", "Find the lcm of the numbers {xs}.",
             "Compute the smallest positive integer divisible by each of {xs}."),
            lambda p: math.lcm(*p["xs"]),
            _lcm_solution,
        ),
        Family(
            "power_sum",
            _powsum_sample,
            ("What is the sum of i^{k} for i from {a} to {b}?", "Add up j^{k} for every integer j from {a} to {b}.",
             "Compute the sum of n**{k} over the integers n from {a} through {b}."),
            lambda p: sum(i ** p["k"] for i in range(p["a"], p["b"] + 1)),
            _powsum_solution,
        ),
        Family(
            "prime_power",
            _chain_sample,
            ("Let x be the number of primes less than {n}. What is x^{e} mod {m}?",
             "Count the primes below {n}, call the count x, and find x to the power {e} modulo {m}.",
             "If x is how many primes are smaller than {n}, what is the remainder of x^{e} divided by {m}?"),
            lambda p: pow(_prime_count(p["n"]), p["e"], p["m"]),
            _chain_solution,
        ),
    )
}


def _big_str(x: int) -> str:
    """str() of an arbitrarily long int, independent of the interpreter's 4,300-digit conversion limit."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return str(x)
    finally:
        sys.set_int_max_str_digits(old)


def _format_question(family: Family, params: dict, template: int) -> str:
    values = {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in params.items()}
    # "k^{k}" in the power_sum template uses k as the summation variable; the exponent is params["k"].
    return family.templates[template].format(**values)


def make_problem(family_name: str, rng: random.Random, *, templates: tuple[int, ...] | None = None) -> Problem:
    """Draw one problem of a family; ``templates`` restricts the phrasings (held-out templates)."""
    if family_name not in FAMILIES:
        raise ValueError(f"unknown toolcalc family {family_name!r}; known: {sorted(FAMILIES)}")
    fam = FAMILIES[family_name]
    params = fam.sample(rng)
    allowed = templates if templates is not None else tuple(range(len(fam.templates)))
    bad = [t for t in allowed if not 0 <= t < len(fam.templates)]
    if bad or not allowed:
        raise ValueError(f"family {family_name!r} has templates 0..{len(fam.templates) - 1}, got {allowed}")
    template = allowed[rng.randrange(len(allowed))]
    return Problem(family_name, params, _format_question(fam, params, template), fam.answer(params), template)


def problem_key(problem: Problem) -> str:
    """Identity of a problem across splits: family + parameters (phrasing does not make a new problem)."""
    text = problem.family + ":" + repr(sorted(problem.params.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:16]
