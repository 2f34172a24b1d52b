from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Each auth test signs with its own keys, so rotation tests touch no one else."""
    return settings.model_copy(update={"data_dir": tmp_path / "data"})
