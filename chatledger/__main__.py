from chatledger.cli import app

app(prog_name="chatledger")
