#!/usr/bin/env python3
"""Rebuild Sources/Calibration/Resources/{default-calibration,heldout-eval}.jsonl from Debian packages.

usage: Scripts/make-default-calibration.py [OUT_DIR]      (default: Sources/Calibration/Resources)

Sources (all public domain; see Sources/Calibration/Resources/README.md):
  r-cran-janeaustenr  Jane Austen's six novels (extracted without R by Scripts/extract_janeausten.py)
  miscfiles           /usr/share/state/us-constitution.gz, us-declaration.gz
  dict-devil          /usr/share/dictd/devil.dict.dz (Ambrose Bierce, The Devil's Dictionary)
Calibration: Emma, Mansfield Park, Northanger Abbey, Pride and Prejudice, Sense and Sensibility (48 records
each, evenly spaced through the novel), all of the Constitution and the Declaration, 120 records of The Devil's Dictionary,
interleaved so that every prefix of the file is a similar mix. Held-out evaluation: Persuasion only (64 records).
Records are consecutive paragraphs merged until they reach 250 words; line wraps inside prose paragraphs are
undone, verse keeps its lines. Output is deterministic for the same package versions.
Needs apt-get (download only, nothing is installed), dpkg-deb and python3.
"""
import gzip, hashlib, json, os, re, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import extract_janeausten  # noqa: E402

PACKAGES = {'r-cran-janeaustenr': '1.0.0-1', 'miscfiles': '1.5+dfsg-4', 'dict-devil': '1.0-13.1'}
NOVELS = {  # janeaustenr name -> (title, year of first publication)
    'emma': ('Emma', 1815), 'mansfieldpark': ('Mansfield Park', 1814),
    'northangerabbey': ('Northanger Abbey', 1817), 'prideprejudice': ('Pride and Prejudice', 1813),
    'sensesensibility': ('Sense and Sensibility', 1811), 'persuasion': ('Persuasion', 1817),
}
CALIBRATION_NOVELS = ['emma', 'mansfieldpark', 'northangerabbey', 'prideprejudice', 'sensesensibility']
HELDOUT_NOVEL = 'persuasion'
RECORDS_PER_NOVEL = 48
DEVIL_RECORDS = 120
HELDOUT_RECORDS = 64
MIN_WORDS = 250          # merge paragraphs until a record has at least this many words
CHAPTER_FLUSH_WORDS = 200  # at a chapter break, a record this long is closed; a shorter one runs on
HEADING = re.compile(r'^(CHAPTER|Chapter|VOLUME|Volume)\s+[IVXLC0-9]+\.?$')


def fetch(work):
    for name, version in PACKAGES.items():
        subprocess.run(['apt-get', 'download', name], cwd=work, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        deb = next(f for f in os.listdir(work) if f.startswith(name + '_') and f.endswith('.deb'))
        got = subprocess.run(['dpkg-deb', '-f', os.path.join(work, deb), 'Version'], check=True,
                             capture_output=True, text=True).stdout.strip()
        if got != version:
            print(f'warning: {name} {got} differs from {version}; the output will differ from the committed one',
                  file=sys.stderr)
        subprocess.run(['dpkg-deb', '-x', os.path.join(work, deb), os.path.join(work, 'x')], check=True)
    return os.path.join(work, 'x')


def paragraphs(lines):
    """(first line number, last line number, [lines]) for each run of non-blank lines; numbers are 1-based."""
    out, cur, start = [], [], 0
    for n, line in enumerate(lines, 1):
        if line.strip():
            if not cur:
                start = n
            cur.append(line.rstrip())
        elif cur:
            out.append((start, n - 1, cur)); cur = []
    if cur:
        out.append((start, len(lines), cur))
    return out


def clean(par_lines):
    """A block whose lines are mostly indented is verse or a quotation: its lines are kept (deep indents cut to
    8 spaces). Otherwise it is prose: an indented line starts a new paragraph, wraps are undone, spaces are
    single. _italic_ marks are dropped."""
    indented = sum(1 for l in par_lines if l[:1].isspace())
    if len(par_lines) == 1:
        text = par_lines[0].strip()
    elif 2 * indented > len(par_lines):
        text = '\n'.join(re.sub(r'^\s{9,}', ' ' * 8, l) for l in par_lines)
    else:
        pars, cur = [], []
        for l in par_lines:
            if l[:1].isspace() and cur:
                pars.append(cur); cur = []
            cur.append(l.strip())
        pars.append(cur)
        text = '\n\n'.join(re.sub(r'\s+', ' ', ' '.join(p)) for p in pars)
    return re.sub(r'_([^_\n]+)_', r'\1', text)


def merge(pars, breaks=()):
    """Merge (first, last, text) paragraphs into records of >= MIN_WORDS words. `breaks` are line numbers of
    chapter headings: a record of >= CHAPTER_FLUSH_WORDS words ends there. A short tail joins the previous record."""
    records, cur, words, first, last = [], [], 0, 0, 0
    breaks = sorted(breaks); bi = 0
    for start, end, text in pars:
        while bi < len(breaks) and breaks[bi] < start:
            if cur and words >= CHAPTER_FLUSH_WORDS:
                records.append([first, last, cur]); cur, words = [], 0
            bi += 1
        if not cur:
            first = start
        cur.append(text); words += len(text.split()); last = end
        if words >= MIN_WORDS:
            records.append([first, last, cur]); cur, words = [], 0
    if cur:
        if records:
            records[-1][1] = last; records[-1][2] += cur
        else:
            records.append([first, last, cur])
    return [(a, b, '\n\n'.join(t)) for a, b, t in records]


def novel_records(lines):
    start = next(i for i, l in enumerate(lines) if HEADING.match(l.strip()))
    end = len(lines)
    for i, l in enumerate(lines):
        if l.strip() in ('THE END', 'FINIS', 'Finis', 'A NOTE ON THE TEXT') and i > start:
            end = i; break
    pars, breaks = [], []
    for a, b, pl in paragraphs(lines[start:end]):
        if len(pl) == 1 and HEADING.match(pl[0].strip()):
            breaks.append(a + start)
        else:
            pars.append((a + start, b + start, clean(pl)))
    return merge(pars, breaks)


def evenly(records, k):
    n = len(records)
    assert n >= k, (n, k)
    return [records[(2 * i + 1) * n // (2 * k)] for i in range(k)]


def text_records(lines, offset=0):
    """Records of a plain text; `offset` lines were cut before `lines`, so numbers stay those of the file."""
    return merge([(a + offset, b + offset, clean(pl)) for a, b, pl in paragraphs(lines)])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, '..', 'Sources', 'Calibration', 'Resources')
    with tempfile.TemporaryDirectory() as work:
        root = fetch(work)
        rdb = open(os.path.join(root, 'usr/lib/R/site-library/janeaustenr/data/Rdata.rdb'), 'rb').read()
        novels = {name: extract_janeausten.strvec(rec)
                  for name, rec in zip(extract_janeausten.NAMES, extract_janeausten.records(rdb))}
        state = os.path.join(root, 'usr/share/state')
        constitution = gzip.open(os.path.join(state, 'us-constitution.gz'), 'rt', encoding='utf-8').read().split('\n')
        declaration = gzip.open(os.path.join(state, 'us-declaration.gz'), 'rt', encoding='utf-8').read().split('\n')
        devil = gzip.open(os.path.join(root, 'usr/share/dictd/devil.dict.dz'), 'rt', encoding='utf-8').read().split('\n')

    sources = []  # per source: [(text, origin)]
    for name in CALIBRATION_NOVELS:
        title, year = NOVELS[name]
        recs = evenly(novel_records(novels[name]), RECORDS_PER_NOVEL)
        sources.append([(t, f'Jane Austen, {title} ({year}), janeaustenr lines {a}-{b}') for a, b, t in recs])
    sources.append([(t, f'The Constitution of the United States, miscfiles us-constitution lines {a}-{b}')
                    for a, b, t in text_records(constitution)])
    sources.append([(t, f'The Declaration of Independence (1776), miscfiles us-declaration lines {a}-{b}')
                    for a, b, t in text_records(declaration)])
    # The dictd file starts with the database header entries; the book starts at its PREFACE and the last
    # line is the dictd alphabet entry.
    start = next(i for i, l in enumerate(devil) if l.strip() == 'PREFACE')
    end = next(i for i, l in enumerate(devil) if l.strip() == 'abcdefghijklmnopqrstuvwxyz')
    devil_records = evenly(text_records(devil[start:end], offset=start), DEVIL_RECORDS)
    sources.append([(t, f"Ambrose Bierce, The Devil's Dictionary (1911), devil.dict lines {a}-{b}")
                    for a, b, t in devil_records])

    # Interleave: record k of a source with n records sits at (k + 0.5) / n; ties keep source order.
    keyed = sorted(((k + 0.5) / len(recs), s, k) for s, recs in enumerate(sources) for k in range(len(recs)))
    calibration = [sources[s][k] for _, s, k in keyed]
    title, year = NOVELS[HELDOUT_NOVEL]
    heldout = [(t, f'Jane Austen, {title} ({year}), janeaustenr lines {a}-{b}')
               for a, b, t in evenly(novel_records(novels[HELDOUT_NOVEL]), HELDOUT_RECORDS)]
    assert len(calibration) >= 300, len(calibration)

    for name, recs in (('default-calibration.jsonl', calibration), ('heldout-eval.jsonl', heldout)):
        body = ''.join(json.dumps({'origin': o, 'text': t}, ensure_ascii=False) + '\n' for t, o in recs)
        with open(os.path.join(out, name), 'w', encoding='utf-8', newline='\n') as f:
            f.write(body)
        words = [len(t.split()) for t, _ in recs]
        print(f'{name}: {len(recs)} records, {sum(words)} words (min {min(words)}, max {max(words)}), '
              f'{len(body.encode())} bytes, sha256 {hashlib.sha256(body.encode()).hexdigest()}')
    for recs in sources:
        print(f'  {len(recs):4d} records from {recs[0][1].split(",")[0]}: {recs[0][1]}')


if __name__ == '__main__':
    main()
