from browser import browser, open_page, platform  # noqa: F401  (fixtures)
