"""Nodal stations named in lesion and mask names (pure string work, no imaging imports).

Kept apart from :mod:`pipeline.anatomy.site` (which imports scipy and the surface code) so that
the ranking, which reads only tables, can name a node's station without loading them;
:mod:`pipeline.anatomy.site` re-exports both names.
"""

from __future__ import annotations

#: Nodal stations recognised in lesion / mask names (first match wins; more specific first), as
#: (station, name fragments). All stations are one organ ``lymph_node``; the station is the site
#: used for injection-site diversity.
NODAL_STATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("supraclavicular", ("supraclav",)),
    ("axillary", ("axilla",)),
    ("inguinal", ("inguinal", "groin")),
    ("cervical", ("cervical", "neck", "submandib", "jugulodigastric")),
    ("mediastinal", ("mediastin", "paratrache", "subcarinal", "prevascular", "aortopulmonary")),
    ("hilar", ("hilar", "hilum")),
    ("paraaortic", ("paraaortic", "para_aortic", "periaortic", "aortocaval", "retroperiton",
                    "retrocaval", "paracaval")),
    ("mesenteric", ("mesenter",)),
    ("iliac", ("iliac",)),
    ("pelvic", ("pelvic", "obturator", "perirectal", "mesorectal")),
    ("popliteal", ("poplit",)),
    ("epitrochlear", ("epitrochlear",)),
)


def nodal_station(name: str) -> str:
    """Nodal station named in a lesion or mask name ("node_axillary_R" -> "axillary"), else "".

    Case-insensitive; blanks, dashes and dots count as underscores. See :data:`NODAL_STATIONS`.
    """
    n = "".join(c if c.isalnum() else "_" for c in str(name).strip().lower())
    for station, frags in NODAL_STATIONS:
        if any(f in n for f in frags):
            return station
    return ""
