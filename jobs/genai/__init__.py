"""The genai example's jobs: tiny models built locally, synthetic documents and questions, the report."""
