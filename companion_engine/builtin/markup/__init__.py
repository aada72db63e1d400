"""What a reply's markup would make a client do, and how ``sanitize_html`` prevents it.

A reply is shown by a browser, often after a markdown renderer. Both read the same text, so
the sanitizer reads it as they do, in three streaming passes:

- ``tags``: HTML tags tokenised as the HTML5 tokenizer does them (``/`` separators, unquoted
  values, character references in values, case), one tag at a time.
- ``policy``: the one place that decides what a browser would fetch or execute: URLs
  (schemes after entity decoding and whitespace/control obfuscation, remote hosts), styles,
  event handlers, elements.
- ``html``: the HTML pass; ``markdown``: link and image destinations, reference definitions.

Every pass holds back only text that is still undecided, so the output is the same however
the reply was chunked.
"""
