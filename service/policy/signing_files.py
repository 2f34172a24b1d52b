"""Owner keys on disk, and signing the agreements of a policy folder in place.

``sign_folder`` edits each agreement's ``signature:`` line in the file's own text, so
comments and layout stay as the owner wrote them. Where an agreement is written in flow
style (``- {id: ..., ...}``) there is no line to edit, and that file is rewritten cleanly
(comments lost) instead; the report says which files were rewritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.policy.loader import not_a_mapping, policy_files, validated_policy_file
from service.policy.schemas import AgreementSpec, PolicyFile
from service.policy.signing import OwnerSigner, OwnerVerifier, SigningKeyError
from service.private_files import check_owner_only
from service.sourcefile import SourceError, SourceFileError, parse_yaml, read_source_text


def write_private_key(path: Path, signer: OwnerSigner) -> None:
    """Write the key file (mode 0600); never overwrite an existing file."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(signer.private_text() + "\n")


def read_private_key(path: Path) -> OwnerSigner:
    """The owner key in ``path``. Raises ``SharedSecretFile``, reading nothing, if the file
    is open to other accounts (``check_owner_only``), and ``SigningKeyError`` if it cannot
    be read or holds no owner key."""
    try:
        check_owner_only(path, "owner key")
        return OwnerSigner.parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SigningKeyError("not a signing key file (not UTF-8 text)") from None


@dataclass
class SignReport:
    signed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)


def _quoted(signature: str) -> str:
    return f'"{signature}"'


def _named(node: yaml.Node, name: str) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.value == name


def _agreement_nodes(text: str) -> list[yaml.MappingNode | None]:
    """The mapping node of each entry of ``agreements:`` (``None`` where it is not a mapping)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if _named(key, "agreements") and isinstance(value, yaml.SequenceNode):
            return [item if isinstance(item, yaml.MappingNode) else None for item in value.value]
    return []


def _edit_in_place(text: str, signatures: dict[int, str]) -> str | None:
    """``text`` with each agreement at index ``i`` carrying ``signatures[i]``; ``None`` if
    an agreement is not a block mapping with a plain ``id:`` line to sign after."""
    nodes = _agreement_nodes(text)
    edits: list[tuple[int, int, str]] = []
    for index, signature in signatures.items():
        node = nodes[index] if index < len(nodes) else None
        if node is None or node.flow_style:
            return None
        existing = next((pair for pair in node.value if _named(pair[0], "signature")), None)
        if existing is not None:
            value = existing[1]
            edits.append((value.start_mark.index, value.end_mark.index, _quoted(signature)))
            continue
        id_pair = next((pair for pair in node.value if _named(pair[0], "id")), None)
        if id_pair is None:
            return None
        key, value = id_pair
        # A new line after the id's value, at the mapping's indentation.
        line_end = text.find("\n", value.end_mark.index)
        at = len(text) if line_end < 0 else line_end + 1
        prefix = "" if line_end >= 0 else "\n"
        edits.append((at, at, f"{prefix}{' ' * key.start_mark.column}signature: {_quoted(signature)}\n"))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def sign_folder(directory: Path, signer: OwnerSigner) -> SignReport:
    """Sign every agreement of ``signer``'s department in ``directory``, in place.

    Raises ``SourceFileError`` (and writes nothing) if one of its files cannot be read (a
    folder, a symlink loop, not UTF-8), does not parse or holds an agreement that is not
    valid as written: an owner signs what it can read.
    """
    report = SignReport()
    errors: list[SourceError] = []
    planned: list[tuple[Path, str, dict[int, str], list[dict[str, Any]], str]] = []
    verifier = OwnerVerifier.parse(signer.verifier_key())
    for path in policy_files(directory):
        text = read_source_text(path)
        document = parse_yaml(text, str(path))
        if (refusal := not_a_mapping(document)) is not None:
            # Refused as apply refuses it: whose file it is cannot be told.
            errors.append(refusal)
            continue
        if document.data.get("owner") != signer.department:
            continue
        policy_file = validated_policy_file(document, errors)
        if policy_file is None:
            continue
        signatures: dict[int, str] = {}
        contents: list[dict[str, Any]] = []
        for index, raw in enumerate(policy_file.agreements):
            try:
                spec = AgreementSpec.model_validate(raw)
            except ValidationError as exc:
                errors.extend(document.pydantic_errors(exc, prefix=("agreements", index)))
                continue
            content = spec.content()
            if verifier.problem(content, signer.department) is None:
                report.already.append(spec.id)
                contents.append(content)
                continue
            signatures[index] = signer.sign(content)
            contents.append(signer.signed(content))
            report.signed.append(spec.id)
        if signatures:
            planned.append((path, text, signatures, contents, policy_file.owner))
    if errors:
        raise SourceFileError(errors)
    for path, text, signatures, contents, owner in planned:
        edited = _edit_in_place(text, signatures)
        if edited is None or not _signed_as_planned(edited, str(path), signer, verifier):
            clean = {"owner": owner, "agreements": contents}
            edited = yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)
            report.rewritten.append(str(path))
        path.write_text(edited, encoding="utf-8")
        report.files.append(str(path))
    return report


def _signed_as_planned(text: str, file: str, signer: OwnerSigner, verifier: OwnerVerifier) -> bool:
    """Re-read an edited file: every agreement must now verify (else rewrite cleanly)."""
    try:
        document = parse_yaml(text, file)
        policy_file = PolicyFile.model_validate(document.data)
        specs = [AgreementSpec.model_validate(raw) for raw in policy_file.agreements]
    except (SourceFileError, ValidationError):
        return False
    return all(verifier.problem(spec.content(), signer.department) is None for spec in specs)
