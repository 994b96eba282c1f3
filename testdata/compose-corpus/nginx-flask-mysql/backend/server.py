import os
from flask import Flask
import mysql.connector

app = Flask(__name__)


@app.route("/")
def index():
    with open("/run/secrets/db-password") as f:
        pw = f.read().strip()
    conn = mysql.connector.connect(host="db", user="root", password=pw, database="example")
    cur = conn.cursor()
    cur.execute("SELECT 1")
    return "ok: %s\n" % cur.fetchone()[0]


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("FLASK_SERVER_PORT", 9091)))
