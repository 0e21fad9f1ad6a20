import { resolve } from 'node:path';
import { defineConfig } from 'vite';

// Palisade serves the build under /app; `npm run dev` proxies the GraphQL endpoint (HTTP and
// WebSocket) to a local `cargo run`, so the app talks to the same origin either way.
const server = process.env.PALISADE_URL ?? 'http://localhost:8080';

export default defineConfig({
  base: '/app/',
  build: {
    rollupOptions: {
      input: {
        main: resolve(import.meta.dirname, 'index.html'),
        apollo: resolve(import.meta.dirname, 'apollo.html'),
      },
    },
  },
  server: {
    proxy: {
      '/graphql': { target: server, ws: true },
    },
  },
});
