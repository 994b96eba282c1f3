const express = require("express");
const mongoose = require("mongoose");
const app = express();
mongoose.connect(process.env.MONGO_URL);
app.get("/api/health", (req, res) => res.json({ ok: true }));
app.listen(3000, () => console.log("listening on 3000"));
