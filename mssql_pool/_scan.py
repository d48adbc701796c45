"""What a batch of T-SQL does to its session: a small tokenizer-based scanner.

The pool must know, for every statement a borrower runs, whether it leaves something in
the session that the next borrower would inherit. :func:`scan` answers with a small bit
set:

* :data:`WORK`: something ran (always set);
* :data:`TXN`: the batch controls transactions (``BEGIN/COMMIT/ROLLBACK/SAVE TRAN``), or
  may (a procedure call, ``EXEC`` of anything, dynamic SQL): the transaction count is
  then unknown, and a ``commit()``/``rollback()`` call no longer proves it is at its
  baseline;
* :data:`SESSION`: session state changed (SET options, ``USE``, ``#temp`` objects,
  CONTEXT_INFO, session context, cursors, ``DBCC``, dynamic SQL whose text is not a
  literal): a full reset is needed;
* :data:`DISCARD`: state no reset can undo (``EXECUTE AS``, ``SETUSER``, an application
  role, an application lock, a read-only session context key, ``sp_bindsession``): the
  connection must be closed.

How it reads a batch. The text is lower-cased and cut into tokens by a regular expression
(one ``findall`` when the text holds no block comment, a loop that follows their nesting
otherwise; a property test keeps the two in agreement): comments
(``--`` to the end of the line, nested ``/* */``) are dropped; string literals
(``'...'``, ``N'...'``, ``''`` escapes), bracketed (``[...]``, ``]]`` escapes) and quoted
(``"..."``) identifiers, variables (``@x``, ``@@x``), temp names (``#x``), words, numbers
and punctuation are tokens. Keywords are recognised only as bare words, so ``[use]`` is a
name and ``'SET NOCOUNT ON'`` is a string. Rules then look at the tokens, wherever a
statement starts (T-SQL needs no semicolons, so rules are anchored on keywords, not on
statement boundaries):

* ``SET <word>`` not followed by ``=`` or ``.`` (which would be ``UPDATE ... SET col =``)
  is a session option; ``SET @var = ...`` is not;
* ``USE <name>`` (not ``USE HINT``/``USE PLAN`` inside ``OPTION (...)``);
* ``EXEC``/``EXECUTE`` followed by ``AS`` (not ``WITH EXECUTE AS`` in a module's
  definition) is impersonation; followed by ``(`` or a string it is dynamic SQL: string
  literals are scanned in turn (``''`` unescaped), anything else (a variable) is unknown:
  ``SESSION | TXN``; followed by a name it is a procedure call: ``TXN``;
* a batch whose first token is a name that is not a statement keyword is a procedure
  call without ``EXEC``: ``TXN``;
* known system procedures are recognised by name wherever they appear (``EXEC``, no
  ``EXEC``, ``sys.`` prefix, brackets): ``sp_set_session_context`` (DISCARD when its
  ``@read_only`` argument, named or third positional, is anything but a literal 0),
  ``sp_setapprole``, ``sp_getapplock``, ``sp_bindsession``; ``sp_executesql`` scans its
  first argument like ``EXEC (...)``.

The scanner is deliberately conservative: a false positive costs one reset round trip,
a miss would hand the next borrower someone else's session. Results are cached per
statement text (bounded).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "WORK", "SESSION", "DISCARD", "TXN", "HELD", "PENDING", "FAILED", "scan", "tokens",
    "describe", "pure_read", "statement_flags",
]

WORK = 1       #: statements ran
SESSION = 2    #: session state changed: needs a full reset
DISCARD = 4    #: state no reset can clear: close the connection
TXN = 8        #: transaction control ran or may have run: the transaction count is unknown
HELD = 16      #: not a pure read (:func:`pure_read`): may hold locks or rows in the transaction
# Set by the proxy (connection.py), never by the scan:
PENDING = 32   #: a result set was not read to its end: the statement may still be running
FAILED = 64    #: a statement failed: the transaction may be gone or doomed

_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<line>--[^\n]*)
    | (?P<block>/\*)
    | (?P<str>n?'(?:[^']|'')*(?:'|\Z))
    | (?P<bracket>\[(?:[^\]]|\]\])*(?:\]|\Z))
    | (?P<quoted>"(?:[^"]|"")*(?:"|\Z))
    | (?P<var>@@?[\w@$#]*)
    | (?P<temp>\#\#?[\w@$#]*)
    | (?P<num>\d[\w.]*)
    | (?P<word>[^\W\d][\w@$#]*)
    | (?P<op>[-+*/%&|^]=|[<>!]=|<>|.)
    | (?P<end>\Z)
    )
    """,
    re.VERBOSE | re.DOTALL,
)
_BLOCK = re.compile(r"/\*|\*/")

# Token kinds as small ints: a tuple compare is cheaper than a string compare.
WORD, NAME, STR, VAR, TEMP, NUM, OP = range(7)
_KIND = {"word": WORD, "bracket": NAME, "quoted": NAME, "str": STR, "var": VAR,
         "temp": TEMP, "num": NUM, "op": OP}

Token = tuple[int, str]   # (kind, value): words lower-cased, names and strings unquoted


def _skip_block(text: str, pos: int) -> int:
    """End of a (nested) block comment starting just before ``pos``."""
    depth = 1
    while depth:
        m = _BLOCK.search(text, pos)
        if m is None:
            return len(text)
        depth += 1 if m.group() == "/*" else -1
        pos = m.end()
    return pos


# The same tokens as _TOKEN, as bare strings, for texts without block comments (whose
# nesting needs the loop in _tokens_slow): one findall at C speed, then a dispatch on the
# first character.
_RAW = re.compile(
    r"""--[^\n]*|n?'(?:[^']|'')*(?:'|\Z)|\[(?:[^\]]|\]\])*(?:\]|\Z)|"(?:[^"]|"")*(?:"|\Z)"""
    r"""|@@?[\w@$#]*|\#\#?[\w@$#]*|\d[\w.]*|[^\W\d][\w@$#]*|[-+*/%&|^]=|[<>!]=|<>|\S""",
    re.DOTALL,
)


def _unquoted(body: str, close: str) -> str:
    """A string's or a quoted name's text, from after its opening quote: the closing quote
    dropped (an unterminated one has none), doubled ones undone."""
    return (body[:-1] if body.endswith(close) else body).replace(close + close, close)


def tokens(text: str) -> list[Token]:
    """Cut ``text`` into tokens (comments and whitespace dropped). Everything is
    lower-cased first: keywords and names compare without case, and the text of a string
    is only ever scanned in turn."""
    text = text.lower()
    if "/*" in text:
        return _tokens_slow(text)
    out: list[Token] = []
    append = out.append
    for t in _RAW.findall(text):
        c = t[0]
        if c == "n" and t[1:2] == "'":
            append((STR, _unquoted(t[2:], "'")))
        elif c.isalpha() or c == "_":
            append((WORD, t))
        elif c == "'":
            append((STR, _unquoted(t[1:], "'")))
        elif c == "[":
            append((NAME, _unquoted(t[1:], "]")))
        elif c == '"':
            append((NAME, _unquoted(t[1:], '"')))
        elif c == "@":
            append((VAR, t))
        elif c == "#":
            append((TEMP, t))
        elif c.isdigit():
            append((NUM, t))
        elif c == "-" and t.startswith("--"):
            continue
        else:
            append((OP, t))
    return out


def _tokens_slow(text: str) -> list[Token]:
    """:func:`tokens` for a lower-cased text that may hold (nested) block comments."""
    out: list[Token] = []
    append = out.append
    pos, end = 0, len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        assert m is not None   # "op" matches any character, "end" the end
        kind = m.lastgroup or "op"
        pos = m.end()
        if kind == "line" or kind == "end":
            continue
        if kind == "block":
            pos = _skip_block(text, pos)
            continue
        value = m.group(kind)
        if kind == "str":
            append((STR, _unquoted(value[2:] if value[0] == "n" else value[1:], "'")))
        elif kind == "bracket":
            append((NAME, _unquoted(value[1:], "]")))
        elif kind == "quoted":
            append((NAME, _unquoted(value[1:], '"')))
        else:
            append((_KIND[kind], value))
    return out


# Words that begin a statement: a batch starting with any other name is a procedure call.
_STATEMENT_WORDS = frozenset("""
    select insert update delete merge with create alter drop truncate declare set if while
    begin end commit rollback save print raiserror throw waitfor use exec execute return goto
    break continue grant revoke deny kill dbcc backup restore checkpoint open fetch close
    deallocate bulk readtext writetext updatetext reconfigure shutdown revert setuser
    disable enable receive send get move else values go
""".split())

_DISCARD_PROCS = frozenset({"sp_setapprole", "sp_getapplock", "sp_bindsession"})
_TRAN_WORDS = frozenset({"tran", "transaction", "distributed"})
_ASSIGN = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "."})


def _is_name(tok: Token) -> bool:
    return tok[0] == WORD or tok[0] == NAME


def _arguments(toks: Sequence[Token], i: int) -> list[list[Token]]:
    """Comma-separated arguments of a procedure call at ``i``, up to a ``;`` or the next
    statement keyword at depth 0 (an approximation, good enough for the rules here)."""
    args: list[list[Token]] = [[]]
    depth = 0
    n = len(toks)
    while i < n:
        tok = toks[i]
        if tok[0] == OP:
            if tok[1] == "(":
                depth += 1
            elif tok[1] == ")":
                if depth == 0:
                    break
                depth -= 1
            elif tok[1] == ";" and depth == 0:
                break
            elif tok[1] == "," and depth == 0:
                args.append([])
                i += 1
                continue
        elif depth == 0 and tok[0] == WORD and tok[1] in _STATEMENT_WORDS and args[-1] \
                and tok[1] not in ("output", "out"):
            break
        args[-1].append(tok)
        i += 1
    return args if args[0] else []


def _session_context_flags(args: list[list[Token]]) -> int:
    """``sp_set_session_context @key, @value, @read_only``: DISCARD unless read-only is
    absent or a literal 0."""
    read_only: list[Token] | None = None
    positional = 0
    for arg in args:
        if len(arg) >= 2 and arg[0][0] == VAR and arg[1] == (OP, "="):
            if arg[0][1] == "@read_only":
                read_only = arg[2:]
        else:
            positional += 1
            if positional == 3:
                read_only = arg
    if read_only is None or read_only == [(NUM, "0")]:
        return SESSION
    return DISCARD


def _dynamic_text(toks: Sequence[Token], depth: int) -> int:
    """Flags of the text of dynamic SQL given as ``toks`` (an expression): string literals
    are scanned in turn, anything else (a variable, a function) is text we cannot see."""
    flags = TXN
    seen = False
    for kind, value in toks:
        if kind == STR:
            flags |= _scan_tokens(tokens(value), depth + 1)
            seen = True
        elif kind != OP or value not in "()+":
            flags |= SESSION
    return flags if seen else flags | SESSION


def _parenthesised(toks: Sequence[Token], i: int) -> list[Token]:
    """The tokens inside the parentheses opening at ``i``."""
    level = 0
    for j in range(i, len(toks)):
        if toks[j] == (OP, "("):
            level += 1
        elif toks[j] == (OP, ")"):
            level -= 1
            if level == 0:
                return list(toks[i + 1:j])
    return list(toks[i + 1:])


def _first_argument(args: list[list[Token]]) -> list[Token]:
    if not args:
        return []
    arg = args[0]
    if len(arg) >= 2 and arg[0][0] == VAR and arg[1] == (OP, "="):
        return arg[2:]
    return arg


_MAX_DEPTH = 8


def _bare_procedure_call(toks: Sequence[Token]) -> bool:
    """A batch whose first statement is a bare name: a procedure call without EXEC."""
    n = len(toks)
    first = 0
    while first < n and toks[first] == (OP, ";"):
        first += 1
    if first >= n:
        return False
    kind, value = toks[first]
    if not (kind == NAME or (kind == WORD and value not in _STATEMENT_WORDS)):
        return False
    return not (first + 1 < n and toks[first + 1] == (OP, ":"))   # a label


def _at(toks: Sequence[Token], i: int) -> Token | None:
    return toks[i] if 0 <= i < len(toks) else None


def _set_rule(toks: Sequence[Token], i: int, depth: int) -> int:
    """SET option ... changes the session; SET @v = ... and UPDATE's SET col = do not."""
    nxt, after = _at(toks, i + 1), _at(toks, i + 2)
    if nxt is not None and _is_name(nxt) and (
            after is None or after[0] != OP or after[1] not in _ASSIGN):
        return SESSION
    return 0


def _use_rule(toks: Sequence[Token], i: int, depth: int) -> int:
    nxt, prev = _at(toks, i + 1), _at(toks, i - 1)
    if nxt is not None and (_is_name(nxt) or nxt[0] == STR) \
            and not (prev is not None and prev[0] == OP and prev[1] in "(,"):
        return SESSION
    return 0


def _exec_rule(toks: Sequence[Token], i: int, depth: int) -> int:
    nxt, prev = _at(toks, i + 1), _at(toks, i - 1)
    if nxt is None:
        return 0
    if nxt == (WORD, "as"):       # EXECUTE AS (not WITH EXECUTE AS in a definition)
        return DISCARD if prev != (WORD, "with") and prev != (OP, ",") else 0
    if nxt == (OP, "("):
        return _dynamic_text(_parenthesised(toks, i + 1), depth)
    if nxt[0] == STR:
        return _dynamic_text([nxt], depth)
    if nxt[0] == VAR and _at(toks, i + 2) == (OP, "="):
        return TXN                # EXEC @rc = proc: the name follows
    if nxt[0] == VAR:
        return TXN | SESSION      # EXEC @name: a procedure we cannot name
    return TXN


def _tran_rule(toks: Sequence[Token], i: int, depth: int) -> int:
    nxt = _at(toks, i + 1)
    return TXN if nxt is not None and nxt[0] == WORD and nxt[1] in _TRAN_WORDS else 0


def _open_rule(toks: Sequence[Token], i: int, depth: int) -> int:
    nxt = _at(toks, i + 1)      # an opened key stays open for the session
    return SESSION if nxt is not None and nxt[1] in ("symmetric", "master") else 0


def _always(flags: int) -> Callable[[Sequence[Token], int, int], int]:
    return lambda toks, i, depth: flags


#: What each statement word implies, given the tokens around it.
_WORD_RULES: dict[str, Callable[[Sequence[Token], int, int], int]] = {
    "set": _set_rule,
    "use": _use_rule,
    "exec": _exec_rule,
    "execute": _exec_rule,
    "commit": _always(TXN),
    "rollback": _always(TXN),
    "begin": _tran_rule,
    "save": _tran_rule,
    "setuser": _always(DISCARD),
    "revert": _always(SESSION),
    "context_info": _always(SESSION),
    "cursor": _always(SESSION),
    "dbcc": _always(SESSION),
    "open": _open_rule,
}


def _procedure_rule(toks: Sequence[Token], i: int, depth: int) -> int:
    """A system procedure named anywhere (``sp_...``, as a word or a bracketed name)."""
    value = toks[i][1]
    if value in _DISCARD_PROCS:
        return DISCARD
    if value == "sp_set_session_context":
        return _session_context_flags(_arguments(toks, i + 1))
    if value == "sp_executesql":
        return _dynamic_text(_first_argument(_arguments(toks, i + 1)), depth)
    return 0


def _scan_tokens(toks: Sequence[Token], depth: int = 0) -> int:
    if depth > _MAX_DEPTH:
        return SESSION | TXN
    flags = WORK | (TXN if _bare_procedure_call(toks) else 0)
    for i, (kind, value) in enumerate(toks):
        if kind == TEMP:
            flags |= SESSION
            continue
        if kind == WORD:
            rule = _WORD_RULES.get(value)
            if rule is not None:
                flags |= rule(toks, i, depth)
        if (kind == WORD or kind == NAME) and value.startswith("sp_"):
            flags |= _procedure_rule(toks, i, depth)
    return flags


_cache: dict[str, int] = {}
_CACHE_MAX = 4096
_V = TypeVar("_V")
# Fast path: a batch that starts with one of these words and contains none of the hints
# (lower-cased substrings every rule above needs) is plain work, without tokenizing.
_PLAIN_START = re.compile(r"\s*(?:select|insert|update|delete|merge)\b")
_HINTS = ("#", "set", "use", "exec", "commit", "rollback", "tran", "context_info", "cursor",
          "dbcc", "sp_", "revert", "symmetric", "master")


def _text(sql: object) -> str:
    """A batch as text: bytes are decoded as UTF-8, anything else is ``str()``'d."""
    if isinstance(sql, str):
        return sql
    if isinstance(sql, (bytes, bytearray)):
        return bytes(sql).decode("utf-8", "replace")
    return str(sql)


def _remember(cache: dict[str, _V], sql: object, value: _V) -> _V:
    """Keep ``value`` for the statement text ``sql`` (only a str is kept; the cache is
    emptied when full); returns ``value``."""
    if isinstance(sql, str):
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[sql] = value
    return value


def scan(sql: object) -> int:
    """The reset bits a batch implies: always :data:`WORK`, plus TXN/SESSION/DISCARD.

    Results are cached per statement text (bounded).
    """
    cached: int | None = _cache.get(sql)  # type: ignore[call-overload]
    if cached is not None:
        return cached
    text = _text(sql)
    low = text.lower()
    if _PLAIN_START.match(low) and not any(h in low for h in _HINTS):
        flags = WORK
    else:
        flags = _scan_tokens(tokens(text))
    return _remember(_cache, sql, flags)


def describe(flags: int) -> str:
    """``"WORK|TXN"`` and the like, for messages and test failures."""
    names = [name for bit, name in ((WORK, "WORK"), (TXN, "TXN"), (SESSION, "SESSION"),
                                    (DISCARD, "DISCARD"), (HELD, "HELD"),
                                    (PENDING, "PENDING"), (FAILED, "FAILED")) if flags & bit]
    return "|".join(names) or "0"


# --------------------------------------------------------------------------- pure reads

# Words that make a SELECT batch more than one statement that only reads: other statements
# (every statement keyword but CASE's END and ELSE),
# SELECT ... INTO, locking hints and isolation hints that keep locks past the statement,
# FOR UPDATE (caught by "update"), remote sources (a local transaction that reaches a linked
# server is promoted to a distributed one), sequences (NEXT VALUE FOR).
_NOT_PURE = frozenset("""
    into updlock holdlock xlock tablock tablockx paglock serializable repeatableread
    openquery openrowset opendatasource next
""".split()) | (_STATEMENT_WORDS - {"select", "with", "values", "end", "else"})
_SET_OPERATORS = frozenset({"union", "all", "except", "intersect"})


def _has_four_part_name(toks: Sequence[Token]) -> bool:
    """A chain of names with three dots (``server.db.schema.table``): a linked server."""
    dots = 0
    prev: Token | None = None
    for tok in toks:
        if tok == (OP, "."):
            dots += 1
            if dots >= 3:
                return True
        elif not (prev == (OP, ".") and _is_name(tok)):
            dots = 0
        prev = tok
    return False


def _impure_name(kind: int, value: str) -> bool:
    """A word or name that makes a batch more than a read: a procedure, a statement
    keyword, a locking hint, a remote source (see :data:`_NOT_PURE`)."""
    if kind != WORD and kind != NAME:
        return False
    return value.startswith(("sp_", "xp_")) or (kind == WORD and value in _NOT_PURE)


def _pure_read_tokens(toks: Sequence[Token]) -> bool:
    n = len(toks)
    while n and toks[n - 1] == (OP, ";"):
        n -= 1                      # a trailing ";" ends the one statement
    if not n or toks[0][0] != WORD or toks[0][1] not in ("select", "with"):
        return False
    body = toks[:n]
    if _has_four_part_name(body):
        return False
    depth = 0
    selects = 0
    prev: Token | None = None
    for tok in body:
        kind, value = tok
        if kind == TEMP or tok == (OP, ";") or _impure_name(kind, value):
            return False            # a #temp object, a second statement, more than a read
        if kind == OP:
            depth += 1 if value == "(" else -1 if value == ")" else 0
        elif value == "select" and kind == WORD and depth == 0 and not (
                prev is not None and prev[0] == WORD and prev[1] in _SET_OPERATORS):
            selects += 1            # SELECT 1 SELECT 2: two statements
        prev = tok
    return depth == 0 and selects == 1


_read_cache: dict[str, bool] = {}


def pure_read(sql: object) -> bool:
    """Whether ``sql`` is one SELECT statement that only reads, under the isolation level
    the session has: nothing but ``SELECT`` (or ``WITH ... SELECT``, ``UNION`` and the
    other set operators), no ``INTO``, no locking hint that keeps locks past the statement
    (``UPDLOCK``, ``HOLDLOCK``, ``XLOCK``, ``TABLOCK(X)``, ``PAGLOCK``, ``SERIALIZABLE``,
    ``REPEATABLEREAD``), no ``FOR UPDATE``, no procedure (``EXEC``, ``sp_``/``xp_`` names),
    no remote source (``OPENQUERY``, ``OPENROWSET``, ``OPENDATASOURCE``, four-part names),
    no ``NEXT VALUE FOR``, no ``#temp`` object, no second statement.

    Conservative: "False" costs a round trip, a wrong "True" could leave something in an
    open transaction. Results are cached per statement text (bounded)."""
    cached: bool | None = _read_cache.get(sql)  # type: ignore[call-overload]
    if cached is not None:
        return cached
    text = _text(sql)
    result = not scan(text) & ~WORK and _pure_read_tokens(tokens(text))
    return _remember(_read_cache, sql, result)


_stmt_cache: dict[str, int] = {}


def statement_flags(sql: object) -> int:
    """:func:`scan`'s bits plus :data:`HELD` unless ``sql`` is a :func:`pure_read`: what
    the pool's proxy records for a statement. Cached per statement text (bounded)."""
    cached: int | None = _stmt_cache.get(sql)  # type: ignore[call-overload]
    if cached is not None:
        return cached
    flags = scan(sql) | (0 if pure_read(sql) else HELD)
    return _remember(_stmt_cache, sql, flags)
