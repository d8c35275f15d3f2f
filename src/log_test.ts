import { equal } from "node:assert/strict";
import { redactUrls } from "./log.ts";

Deno.test("redactUrls: signed URL queries never reach a log line or an error message", () => {
  equal(
    redactUrls(
      "error sending request for url (https://cdn.example.com/blob/data?X-Amz-Signature=abc&X-Amz-Credential=k): connect",
    ),
    "error sending request for url (https://cdn.example.com/blob/data?REDACTED): connect",
  );
  equal(
    redactUrls("http://127.0.0.1:5000/v2/ without query"),
    "http://127.0.0.1:5000/v2/ without query",
  );
  equal(
    redactUrls('"https://a/b?sig=1" and http://c/d?e=f'),
    '"https://a/b?REDACTED" and http://c/d?REDACTED',
  );
});
