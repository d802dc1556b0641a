// pm2 loads scripts with require() in cluster mode; this shim lets it run the ESM reference agent.
import('./agent.mjs');
