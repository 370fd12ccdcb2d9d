"""HTTP routes and request checks only: the OpenAI routes (``inference``), the admin API (``admin``), the
price list (``prices``), body validation, the access log and the FastAPI dependencies (``deps``: the
``GatewayState`` every route reaches). A route parses, calls one service, shapes the answer; no business
logic lives here. May import every room below it."""
