"""Tools: parsing calls in the template's format, schemas, loading by name or file, and every sandbox failure
becoming an error message for the model."""

import textwrap

import pytest

from tunekit.errors import ConfigError, InvalidValue
from tunekit.tools.builtin import calculator
from tunekit.tools.calls import parse_tool_calls
from tunekit.tools.registry import ToolsConfig, ToolSpec, load_tool, load_tools
from tunekit.tools.sandbox import Limits, network_isolation, run_call, run_calls

LIMITS = Limits(timeout_s=1.0, memory_mb=256, max_output_chars=64)


@pytest.fixture(scope="module")
def tools():
    return {t.name: t for t in load_tools([ToolSpec(name="calculator"), ToolSpec(name="python")])}


def call(tool_name, **arguments):
    from tunekit.tools.calls import ToolCall

    return ToolCall(tool_name, arguments)


def test_calls_are_parsed_in_order_and_malformed_ones_are_calls_with_an_error():
    text = (
        'Let me add. <tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"3\\"}"}</tool_call>'
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": [1]}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": {"expression": "4"}}'
    )
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error is None) for c in calls[:2]] == [
        ("calculator", {"expression": "1 + 2"}, True),
        ("calculator", {"expression": "3"}, True),  # OpenAI's form: arguments as a JSON string
    ]
    assert "not valid JSON" in calls[2].error
    assert '"name"' in calls[3].error
    assert "must be a JSON object" in calls[4].error
    assert "not closed" in calls[5].error
    assert parse_tool_calls("#### 42") == []


def test_the_calculator_reads_arithmetic_and_refuses_everything_else():
    assert calculator("4821 + 3957") == "8778"
    assert calculator("12 * (3 + 4) - 2 ** 3") == "76"
    assert calculator("7 / 2") == "3.5"
    for bad, message in [
        ("__import__('os').system('true')", "only numbers"),
        ("9 ** 9 ** 9", "exponents above"),
        ("1 / 0", "division by zero"),
        ("1 +", "not an arithmetic expression"),
        ("True + 1", "only numbers"),
    ]:
        with pytest.raises(ValueError, match=message):
            calculator(bad)


def test_schemas_come_from_signature_and_docstring_or_the_config(tmp_path):
    tool = load_tool(ToolSpec(name="calculator"))
    assert tool.schema["function"]["name"] == "calculator"
    assert tool.schema["function"]["parameters"]["required"] == ["expression"]
    assert not tool.sandboxed  # the calculator is pure and bounded: it runs in the training process
    source = tmp_path / "my_tools.py"
    source.write_text(
        textwrap.dedent('''
        def shout(word: str) -> str:
            """Upper-case a word.

            Args:
                word: The word.
            """
            return word.upper()

        def untyped(word):
            return word
        ''')
    )
    shout = load_tool(ToolSpec(name=f"{source}:shout"))
    assert shout.name == "shout" and shout.sandboxed
    assert shout.schema["function"]["parameters"]["properties"]["word"]["type"] == "string"
    with pytest.raises(ConfigError, match="no JSON schema can be written"):
        load_tool(ToolSpec(name=f"{source}:untyped"))
    given = {"type": "function", "function": {"name": "echo", "parameters": {"type": "object", "properties": {}}}}
    assert load_tool(ToolSpec(name=f"{source}:untyped", schema=given)).name == "echo"
    for name, message in [
        ("calculater", "unknown tool"),
        (f"{tmp_path}/none.py:f", "not found"),
        (f"{source}:missing", "has no function"),
        ("no_such_pkg.tools:f", "importing no_such_pkg.tools failed"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_tool(ToolSpec(name=name))
    with pytest.raises(ConfigError, match="both called 'calculator'"):
        load_tools([ToolSpec(name="calculator"), ToolSpec(name="calculator")])
    with pytest.raises(InvalidValue, match="max_turns must be at least 1"):
        ToolsConfig(max_turns=0)


def test_a_user_tool_runs_in_the_sandbox_and_answers_with_its_return_value(tmp_path):
    source = tmp_path / "my_tools.py"
    source.write_text('def where(name: str) -> str:\n    """Say.\n\n    Args:\n        name: A name.\n    """\n'
                      '    import os\n    print("printed")\n    return name + " in " + os.getcwd()\n')  # fmt: skip
    tool = load_tool(ToolSpec(name=f"{source}:where"))
    (result,) = run_calls([call("where", name="x")], {"where": tool}, LIMITS)
    assert result.ok and result.output.startswith("x in /") and "tunekit-tool-" in result.output


@pytest.mark.parametrize(
    ("name", "arguments", "kind", "message"),
    [
        ("python", {"code": "while True: pass"}, "timeout", "did not finish within 1 s"),
        ("python", {"code": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"}, "crashed", "SIGSEGV"),
        ("python", {"code": "import os; os._exit(3)"}, "crashed", "exited with code 3"),
        ("python", {"code": "raise KeyError('k')"}, "raised", "KeyError: 'k'"),
        ("python", {"code": "x = bytearray(1 << 30)"}, "out of memory", "ran out of memory"),
        ("python", {"code": "print('y' * 5_000_000)"}, "output flood", "printed more than 1024 bytes"),
        ("calculator", {"expression": "2 +* 3"}, "raised", "not an arithmetic expression"),
        ("calculator", {"expr": "1"}, "bad arguments", "missing argument expression"),
        ("calculator", {"expression": 7}, "bad arguments", "must be of type string"),
        ("calculator", {"expression": "1", "extra": 2}, "bad arguments", "unexpected keyword argument 'extra'"),
        ("search", {"q": "x"}, "unknown tool", "there is no tool 'search'"),
    ],
)
def test_every_failure_is_an_error_message_for_the_model(tools, name, arguments, kind, message):
    result = run_call(call(name, **arguments), tools, LIMITS)
    assert not result.ok and result.error == kind
    assert message in result.output
    assert len(result.output) < 200  # megabytes of output never reach the model
    if kind != "output flood":
        assert result.output.startswith("error: ")


def test_a_malformed_call_is_answered_without_running_anything(tools):
    (bad,) = parse_tool_calls("<tool_call>{oops}</tool_call>")
    result = run_call(bad, tools, LIMITS)
    assert result.error == "malformed" and "not valid JSON" in result.output


def test_output_is_cut_to_the_configured_size_and_the_scratch_directory_is_private(tools):
    (long, scratch, again) = run_calls(
        [
            call("python", code="print('z' * 100)"),
            call("python", code="open('mine.txt', 'w').write('1'); import os; print(sorted(os.listdir()))"),
            call("python", code="import os; print('mine.txt' in os.listdir())"),
        ],
        tools,
        LIMITS,
    )
    assert long.ok and long.output.startswith("z" * 64) and "[truncated: 37 more characters]" in long.output
    assert "mine.txt" in scratch.output
    assert again.output.strip() == "False"  # each call gets a fresh directory


@pytest.mark.skipif(not network_isolation(), reason="this kernel does not let an unprivileged user unshare the network")
def test_a_sandboxed_call_has_no_network(tools):
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)"
    result = run_call(call("python", code=code), tools, LIMITS)
    # Loopback is down in the empty network namespace: not even a local port answers.
    assert not result.ok and "Network is unreachable" in result.output
