from service.errors import ServiceUnavailable


class CatalogMissing(ServiceUnavailable):
    title = "Catalog not loaded"
    slug = "catalog-missing"
