"""Verbatim JSON examples from Zeek's WebSocket API documentation, used as test vectors.

Sources (copied character for character from the documents' code blocks):
- zeek/broker doc/web-socket.rst ("Web Socket", JSON API v1): the ack, every data type, the data
  message, the error message and the event encoding examples.
- zeek/zeek doc/advanced/devel/websocket-api.rst ("Interacting with Zeek using WebSockets"):
  the websocat session (ack and a `hello` event as Zeek 8 sends them, on one line each).
The vector and set examples in web-socket.rst are object bodies without braces; they are kept as
printed and wrapped in braces where parsed.
"""

BROKER_ACK = """
  {
    "type": "ack",
    "endpoint": "925c9110-5b87-57d9-9d80-b65568e87a44",
    "version": "2.2.0-22"
  }
"""

ZEEK_ACK = (
    '{"type":"ack","endpoint":"3eece35d-9f94-568d-861c-6a16c433e090-websocket-2",'
    '"version":"8.0.0-dev.684"}'
)

ZEEK_HELLO_EVENT = (
    '{"type":"data-message","topic":"zeek.test","@data-type":"vector","data":[{"@data-type":'
    '"count","data":1},{"@data-type":"count","data":1},{"@data-type":"vector","data":[{'
    '"@data-type":"string","data":"hello"},{"@data-type":"vector","data":[{"@data-type":'
    '"count","data":3}]},{"@data-type":"vector","data":[]}]}]}'
)

ERROR_MESSAGE = """
  {
    "type": "error",
    "code": "deserialization_failed",
    "context": "input #1 contained malformed JSON -> caf::pec::unexpected_character(1, 1)"
  }
"""

DATA_MESSAGE = """
  {
    "type": "data-message",
    "topic": "/foo/bar",
    "@data-type": "count",
    "data": 1
  }
"""

EVENT_1_MESSAGE = """
  {
    "type": "data-message",
    "topic": "/foo/bar",
    "@data-type": "vector",
    "data": [
      {
        "@data-type": "count",
        "data": 1
      },
      {
        "@data-type": "count",
        "data": 1
      },
      {
        "@data-type": "vector",
        "data": [
          {
            "@data-type": "string",
            "data": "event_1"
          },
          {
            "@data-type": "vector",
            "data": [
              {
                "@data-type": "integer",
                "data": 42
              },
              {
                "@data-type": "string",
                "data": "test"
              }
            ]
          }
        ]
      }
    ]
  }
"""

# One example per data type, in the document's order.
VALUES = {
    "none": """
  {
    "@data-type": "none",
    "data": {}
  }
""",
    "boolean": """
  {
    "@data-type": "boolean",
    "data": true
  }
""",
    "count": """
  {
    "@data-type": "count",
    "data": 123
  }
""",
    "integer": """
  {
    "@data-type": "integer",
    "data": -7
  }
""",
    "real": """
  {
    "@data-type": "real",
    "data": -7.5
  }
""",
    "timespan": """
  {
    "@data-type": "timespan",
    "data": "1500ms"
  }
""",
    "timestamp": """
  {
    "@data-type": "timestamp",
    "data": "2022-04-10T07:00:00.000"
  }
""",
    "string": """
  {
    "@data-type": "string",
    "data": "Hello World!"
  }
""",
    "enum-value": """
  {
    "@data-type": "enum-value",
    "data": "foo"
  }
""",
    "address": """
  {
    "@data-type": "address",
    "data": "2001:db8::"
  }
""",
    "subnet": """
  {
    "@data-type": "subnet",
    "data": "255.255.255.0/24"
  }
""",
    "port": """
  {
    "@data-type": "port",
    "data": "8080/tcp"
  }
""",
    "vector": """
  "@data-type": "vector",
  "data": [
    {
      "@data-type": "count",
      "data": 42
    },
    {
      "@data-type": "integer",
      "data": 23
    }
  ]
""",
    "set": """
  "@data-type": "set",
  "data": [
    {
      "@data-type": "string",
      "data": "foo"
    },
    {
      "@data-type": "string",
      "data": "bar"
    }
  ]
""",
    "table": """
  {
    "@data-type": "table",
    "data": [
      {
        "key": {
          "@data-type": "string",
          "data": "first-name"
        },
        "value": {
          "@data-type": "string",
          "data": "John"
        }
      },
      {
        "key": {
          "@data-type": "string",
          "data": "last-name"
        },
        "value": {
          "@data-type": "string",
          "data": "Doe"
        }
      }
    ]
  }
""",
}


def parse_value(text: str) -> dict:
    """A VALUES example as a dict (wrapping the brace-less vector/set bodies)."""
    import json

    stripped = text.strip()
    return json.loads(stripped if stripped.startswith("{") else "{" + stripped + "}")
