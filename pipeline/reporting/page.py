"""The pieces every report section is made of: a titled block of HTML with its figures, and an HTML table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Section:
    title: str
    body: str = ""  # HTML; figures go between the title and the body
    figures: list[Path] = field(default_factory=list)


def table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="t", na_rep="-", escape=True)
