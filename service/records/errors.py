from service.errors import Forbidden, Gone, NotFound, PreconditionFailed, ValidationFailed


class CitizenNotFound(NotFound):
    title = "Citizen not found"
    slug = "citizen-not-found"


class CitizenErased(Gone):
    title = "Citizen record erased"
    slug = "citizen-erased"


class NotPermitted(Forbidden):
    title = "Not permitted by any agreement"
    slug = "not-permitted"


class StaleVersion(PreconditionFailed):
    title = "The record changed since you read it"
    slug = "stale-version"


class InvalidFieldValue(ValidationFailed):
    title = "Invalid field value"
    slug = "invalid-field-value"
