import './base.css';
import './launcher.css';
