from service.errors import NotFound, ValidationFailed


class CaseNotFound(NotFound):
    title = "Case not found"
    slug = "case-not-found"


class CaseRefRequired(ValidationFailed):
    title = "A case reference is required"
    slug = "case-ref-required"
