"""Kaggle through its official client (PyPI `kaggle`): download, submit, read the submissions, push datasets
and notebooks. Every failure the user can act on comes out as one UserError line.

Credentials are the client's own: ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json), KAGGLE_USERNAME +
KAGGLE_KEY, or an access token (KAGGLE_API_TOKEN, ~/.kaggle/access_token). `import kaggle` authenticates at import
time and prints its help when it cannot, so the client is imported here, lazily, with its output held back.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError

log = logging.getLogger(__name__)
NO_CREDENTIALS = ("no Kaggle credentials: save kaggle.json (kaggle.com → Settings → API → Create New Token) in "
                  "~/.kaggle/ (or $KAGGLE_CONFIG_DIR), or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN")
POLL_SECONDS = 10.0  # between two looks at a submission being scored


@dataclass
class Submission:
    """One row of a competition's submission history, as the client returns it."""

    ref: str
    file_name: str
    description: str
    status: str  # pending | complete | error
    public: float | None
    private: float | None
    error: str

    @classmethod
    def of(cls, api_submission) -> Submission:
        return cls(ref=str(api_submission.ref), file_name=api_submission.file_name or "",
                   description=api_submission.description or "",
                   status=api_submission.status.name.lower().removeprefix("submission_status_"),
                   public=_score(api_submission.public_score), private=_score(api_submission.private_score),
                   error=api_submission.error_description or "")


def _score(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


class Kaggle:
    """The authenticated client; `connect()` makes one."""

    def __init__(self, api):
        self.api = api

    def download(self, competition: str, folder: Path) -> None:
        """The competition's files, unzipped into `folder`."""
        with calling("the download", competition):
            self.api.competition_download_files(competition, path=str(folder), force=True, quiet=True, unzip=True)

    def allowed_now(self, competition: str) -> int | None:
        """Submissions the team may still make today (None when the server does not say)."""
        with calling("checking the submissions left today", competition):
            limits = self.api.competition_get_submission_limits(competition)
        return None if limits is None else limits.num_allowed_now

    def submit(self, competition: str, path: Path, message: str) -> str:
        """Upload `path`; returns Kaggle's submission ref."""
        allowed = self.allowed_now(competition)
        if allowed == 0:
            raise UserError(f"{competition}: the daily submission limit is reached; it resets at 00:00 UTC, "
                            f"submit {path} then (nothing was uploaded)")
        with calling("the submission", competition):
            response = self.api.competition_submit(str(path), message, competition, quiet=True)
        if not response.ref:
            raise UserError(f"{competition}: Kaggle did not take {path} ({response.message or 'upload failed'}); "
                            "rerun the command")
        return str(response.ref)

    def submissions(self, competition: str) -> list[Submission]:
        """The competition's submission history, newest first (the last 100)."""
        with calling("the submission list", competition):
            found = self.api.competition_submissions(competition, page_size=100) or []
        return [Submission.of(s) for s in found if s is not None]

    def wait(self, competition: str, ref: str, minutes: float) -> Submission | None:
        """Poll until submission `ref` is scored or failed; None if still pending after `minutes`."""
        deadline = time.monotonic() + minutes * 60
        while True:
            mine = [s for s in self.submissions(competition) if s.ref == ref]
            if mine and mine[0].status != "pending":
                return mine[0]
            if time.monotonic() + POLL_SECONDS > deadline:
                return None
            time.sleep(POLL_SECONDS)

    def push_dataset(self, folder: Path, message: str) -> str:
        """Create the dataset `folder`'s metadata names, or add a version to it; returns its URL."""
        slug = json.loads((folder / "dataset-metadata.json").read_text())["id"]
        with calling(f"dataset {slug}", None):
            exists = self._dataset_exists(slug)
            if exists:
                response = self.api.dataset_create_version(str(folder), version_notes=message, quiet=True,
                                                           dir_mode="zip")
            else:
                response = self.api.dataset_create_new(str(folder), public=False, quiet=True, dir_mode="zip")
        if response.error:
            raise UserError(f"Kaggle refused dataset {slug}: {response.error}")
        return response.url or f"https://www.kaggle.com/datasets/{slug}"

    def push_kernel(self, folder: Path) -> str:
        """Save (and run) the notebook `folder`'s kernel-metadata.json names; returns its URL."""
        slug = json.loads((folder / "kernel-metadata.json").read_text())["id"]
        with calling(f"notebook {slug}", None):
            response = self.api.kernels_push(str(folder))
        if response.error:
            raise UserError(f"Kaggle refused notebook {slug}: {response.error}")
        return response.url or f"https://www.kaggle.com/code/{slug}"

    def _dataset_exists(self, slug: str) -> bool:
        from requests.exceptions import HTTPError

        try:
            self.api.dataset_status(slug)
        except HTTPError as e:
            if e.response is not None and e.response.status_code == 404:
                return False
            raise
        return True


def connect() -> Kaggle:
    """The official client, authenticated with the user's own credentials."""
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as e:
        raise UserError(f"the Kaggle client is not installed ({e}): pip install kaggle (make setup installs it)") from None
    api = KaggleApi()
    try:
        with contextlib.redirect_stdout(quiet), calling("sign-in", None):
            api.authenticate()
    except SystemExit:  # the client's own answer to no credentials: print its help, exit(1)
        raise UserError(NO_CREDENTIALS) from None
    return Kaggle(api)


@contextlib.contextmanager
def calling(what: str, competition: str | None) -> Iterator[None]:
    """Turn the client's network and HTTP errors into one line that says what to do."""
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as e:
        raise UserError(http_message(e, what, competition)) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise UserError(f"{what}: cannot reach Kaggle ({type(e).__name__}); check the network (or a proxy "
                        "setting) and rerun — nothing was recorded") from None
    except ValueError as e:  # the client's own checks (metadata files, slugs)
        raise UserError(f"{what}: {e}") from None


def http_message(error, what: str, competition: str | None) -> str:
    response = error.response
    status = response.status_code if response is not None else 0
    detail = _detail(response) or str(error)
    where = f" for {competition}" if competition else ""
    if status == 401:
        return (f"Kaggle refused the credentials (401: {detail}): make a new token at "
                "https://www.kaggle.com/settings and replace kaggle.json (or KAGGLE_USERNAME/KAGGLE_KEY)")
    if status == 429 or any(word in detail.lower() for word in ("limit", "allowance", "quota")):
        return f"{what}{where}: {detail} (429); the daily submission count resets at 00:00 UTC"
    if status == 403:
        page = f"https://www.kaggle.com/competitions/{competition}/rules" if competition else "its page"
        return (f"Kaggle refused {what}{where} (403: {detail}): accept the competition's rules at {page} with "
                "the account of these credentials, then rerun")
    if status == 404:
        return f"{what}{where}: not found on Kaggle (404: {detail}); check the name as it appears in the URL"
    return f"Kaggle answered {status} to {what}{where}: {detail}"


def _detail(response) -> str:
    if response is None:
        return ""
    try:
        body = response.json()
        return str(body.get("message") or body.get("error") or "").strip()
    except ValueError:
        return (response.text or "").strip().splitlines()[0][:200] if response.text else ""
