-- The dashboard (issue 16): a token's role. `read` views; `admin` also
-- retries and cancels. Tokens made before roles existed keep what they could
-- do (MCP tokens could always cancel and retry), so they become `admin`.
ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin'
    CHECK (role IN ('read', 'admin'));
